// Reading and writing safetensors files, the checkpoint format of PyTorch /
// Hugging Face models.
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON describing
// every tensor (dtype, shape, byte range), then the data area holding the
// tensors' raw little-endian bytes back to back.
//
// Checkpoints arrive from elsewhere, so the reader trusts nothing: every
// defect of the header or of the byte ranges becomes an xlstm::Error naming the
// file and the defect, and no input makes it read out of bounds. Files are
// memory-mapped, so opening a large checkpoint costs nothing until tensors are
// read, and aligned tensors of the right type can be used in place.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/io/dtype.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define XLSTM_SAFETENSORS_HAVE_MMAP 1
#else
#define XLSTM_SAFETENSORS_HAVE_MMAP 0
#endif

namespace xlstm::io {

/// "[2, 3]" — shapes in messages look like the Python tuples users know.
inline std::string format_shape(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

namespace detail {

/// a * b, or false if it does not fit in std::size_t.
inline bool checked_multiply(std::size_t a, std::size_t b, std::size_t& product) {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) return false;
  product = a * b;
  return true;
}

/// Number of elements of `shape`, or false if the product of its non-zero
/// dimensions overflows. Zero dimensions are skipped in the overflow test so
/// the answer does not depend on the order of the dimensions, and so any
/// partial product a caller forms from the dimensions also fits.
inline bool checked_element_count(const Shape& shape, std::size_t& count) {
  std::size_t product = 1;
  bool has_zero = false;
  for (std::size_t dim : shape) {
    if (dim == 0) {
      has_zero = true;
    } else if (!checked_multiply(product, dim, product)) {
      return false;
    }
  }
  count = has_zero ? 0 : product;
  return true;
}

/// Bytes of `shape` elements of `dtype`, or false on overflow.
inline bool checked_byte_count(const Shape& shape, DType dtype, std::size_t& bytes) {
  std::size_t count = 0;
  return checked_element_count(shape, count) && checked_multiply(count, dtype_size(dtype), bytes);
}

/// Owns the bytes of one file: a read-only mapping or a heap buffer.
class FileBytes {
 public:
  explicit FileBytes(std::vector<std::uint8_t> buffer) : buffer_(std::move(buffer)) {
    data_ = buffer_.data();
    size_ = buffer_.size();
  }
#if XLSTM_SAFETENSORS_HAVE_MMAP
  FileBytes(void* mapping, std::size_t size) : mapping_(mapping) {
    data_ = static_cast<const std::uint8_t*>(mapping);
    size_ = size;
  }
#endif
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes() {
#if XLSTM_SAFETENSORS_HAVE_MMAP
    if (mapping_ != nullptr) ::munmap(mapping_, size_);
#endif
  }

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  std::vector<std::uint8_t> buffer_;
#if XLSTM_SAFETENSORS_HAVE_MMAP
  void* mapping_ = nullptr;  // owned mapping, or null for a heap buffer
#endif
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

inline std::string errno_message(int error) { return std::generic_category().message(error); }

#if XLSTM_SAFETENSORS_HAVE_MMAP
/// Closes a file descriptor on every exit path.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

inline std::shared_ptr<const FileBytes> load_file(const std::string& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(path, ": cannot open: ", errno_message(errno));
  struct stat status {};
  if (::fstat(fd.get(), &status) != 0) fail(path, ": cannot stat: ", errno_message(errno));
  if (S_ISDIR(status.st_mode)) fail(path, ": cannot read: it is a directory");
  if (S_ISREG(status.st_mode) && status.st_size > 0 &&
      static_cast<std::uintmax_t>(status.st_size) <= std::numeric_limits<std::size_t>::max()) {
    const auto size = static_cast<std::size_t>(status.st_size);
    // MAP_PRIVATE: the mapping never writes back. If mapping fails (some file
    // systems cannot), reading into memory below still works.
    void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (mapping != MAP_FAILED) return std::make_shared<const FileBytes>(mapping, size);
  }
  // Pipes, empty files and unmappable files: read to the end.
  std::vector<std::uint8_t> buffer;
  std::uint8_t chunk[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd.get(), chunk, sizeof chunk);
    if (got == 0) break;
    if (got < 0) {
      if (errno == EINTR) continue;
      fail(path, ": cannot read: ", errno_message(errno));
    }
    buffer.insert(buffer.end(), chunk, chunk + got);
  }
  return std::make_shared<const FileBytes>(std::move(buffer));
}
#else
inline std::shared_ptr<const FileBytes> load_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open for reading");
  std::vector<std::uint8_t> buffer((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, ": read error");
  return std::make_shared<const FileBytes>(std::move(buffer));
}
#endif

/// Decodes `count` stored elements of `dtype` into Scalar. `where` starts
/// error messages for values Scalar cannot hold.
template <typename Scalar>
void decode_elements(DType dtype, const std::uint8_t* source, Scalar* dest, std::size_t count,
                     const std::string& where) {
  static_assert(is_convertible_scalar_v<Scalar>,
                "read: Scalar must be a floating-point or integer type");
  if (count == 0) return;
  if constexpr (has_dtype_v<Scalar>) {
    if (dtype == dtype_of<Scalar>() && host_is_little_endian()) {
      std::memcpy(dest, source, count * sizeof(Scalar));
      return;
    }
  }
  const std::size_t stride = dtype_size(dtype);
  auto convert_all = [&](auto load) {
    for (std::size_t i = 0; i < count; ++i) {
      const auto value = load(source + i * stride);
      if (!convert_scalar(value, dest[i])) {
        fail(where, ": element ", i, " (", +value, ") of ", dtype_name(dtype),
             " cannot be represented as the ", "requested ",
             std::is_floating_point_v<Scalar> ? "floating-point" : "integer", " type of ",
             sizeof(Scalar), " bytes");
      }
    }
  };
  switch (dtype) {
    case DType::F64:
      convert_all([](const std::uint8_t* p) {
        return bit_cast<double>(load_little_endian<std::uint64_t>(p));
      });
      return;
    case DType::F32:
      convert_all([](const std::uint8_t* p) {
        return bit_cast<float>(load_little_endian<std::uint32_t>(p));
      });
      return;
    case DType::F16:
      convert_all(
          [](const std::uint8_t* p) { return f16_to_float(load_little_endian<std::uint16_t>(p)); });
      return;
    case DType::BF16:
      convert_all([](const std::uint8_t* p) {
        return bf16_to_float(load_little_endian<std::uint16_t>(p));
      });
      return;
    case DType::I64:
      convert_all([](const std::uint8_t* p) {
        return static_cast<std::int64_t>(load_little_endian<std::uint64_t>(p));
      });
      return;
    case DType::I32:
      convert_all([](const std::uint8_t* p) {
        return static_cast<std::int32_t>(load_little_endian<std::uint32_t>(p));
      });
      return;
    case DType::U8:
      convert_all([](const std::uint8_t* p) { return *p; });
      return;
  }
  fail(where, ": invalid DType value ", static_cast<int>(dtype));
}

/// Encodes `count` Scalar values as little-endian `dtype` elements.
template <typename Scalar>
void encode_elements(const Scalar* source, DType dtype, std::uint8_t* dest, std::size_t count,
                     const std::string& where) {
  static_assert(is_convertible_scalar_v<Scalar>,
                "add_as: Scalar must be a floating-point or integer type");
  const std::size_t stride = dtype_size(dtype);
  auto convert_all = [&](auto target_zero, auto store) {
    using Target = decltype(target_zero);
    for (std::size_t i = 0; i < count; ++i) {
      Target converted{};
      if (!convert_scalar(source[i], converted)) {
        fail(where, ": element ", i, " (", +source[i], ") cannot be represented as ",
             dtype_name(dtype));
      }
      store(converted, dest + i * stride);
    }
  };
  switch (dtype) {
    case DType::F64:
      convert_all(0.0, [](double v, std::uint8_t* p) {
        store_little_endian(bit_cast<std::uint64_t>(v), p);
      });
      return;
    case DType::F32:
      convert_all(0.0f, [](float v, std::uint8_t* p) {
        store_little_endian(bit_cast<std::uint32_t>(v), p);
      });
      return;
    case DType::F16:
    case DType::BF16: {
      // Through double: for a double source this rounds once, correctly
      // (double_to_* avoid the double rounding of going through float).
      const bool brain = dtype == DType::BF16;
      convert_all(0.0, [brain](double v, std::uint8_t* p) {
        store_little_endian(brain ? double_to_bf16(v) : double_to_f16(v), p);
      });
      return;
    }
    case DType::I64:
      convert_all(std::int64_t{0}, [](std::int64_t v, std::uint8_t* p) {
        store_little_endian(static_cast<std::uint64_t>(v), p);
      });
      return;
    case DType::I32:
      convert_all(std::int32_t{0}, [](std::int32_t v, std::uint8_t* p) {
        store_little_endian(static_cast<std::uint32_t>(v), p);
      });
      return;
    case DType::U8:
      convert_all(std::uint8_t{0}, [](std::uint8_t v, std::uint8_t* p) { *p = v; });
      return;
  }
  fail(where, ": invalid DType value ", static_cast<int>(dtype));
}

}  // namespace detail

/// One tensor of a safetensors file as its header describes it.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  /// Byte range [begin, end) within the data area (not the file).
  std::size_t begin = 0, end = 0;

  /// Product of the shape (1 for a scalar, 0 if any dimension is 0).
  std::size_t element_count() const {
    std::size_t count = 0;
    check(detail::checked_element_count(shape, count), "tensor '", name, "': shape ",
          format_shape(shape), " overflows std::size_t");
    return count;
  }
  /// element_count() * dtype_size(dtype), which a validated file guarantees
  /// to equal end - begin.
  std::size_t byte_count() const {
    std::size_t bytes = 0;
    check(detail::checked_byte_count(shape, dtype, bytes), "tensor '", name, "': shape ",
          format_shape(shape), " of ", dtype_name(dtype), " overflows std::size_t bytes");
    return bytes;
  }
};

/// A validated safetensors file, memory-mapped or in memory.
///
/// Copies are cheap and share the file's bytes; pointers from bytes() and
/// view() stay valid while any copy lives. A mapped file must not be
/// truncated by another process while in use (the OS would signal SIGBUS).
class SafetensorsFile {
 public:
  /// Maps (or, where mapping is impossible, reads) `path` and validates it.
  static SafetensorsFile open(const std::string& path) {
    SafetensorsFile file;
    file.name_ = path;
    file.storage_ = detail::load_file(path);
    file.parse();
    return file;
  }

  /// Validates an in-memory file; `name` stands for the file in messages.
  static SafetensorsFile from_bytes(std::vector<std::uint8_t> bytes,
                                    std::string name = "<memory>") {
    SafetensorsFile file;
    file.name_ = std::move(name);
    file.storage_ = std::make_shared<const detail::FileBytes>(std::move(bytes));
    file.parse();
    return file;
  }

  /// The path or given name; every error message starts with it.
  const std::string& name() const { return name_; }
  /// The "__metadata__" strings (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& tensor) const { return tensors_.count(tensor) != 0; }
  std::size_t size() const { return tensors_.size(); }

  const TensorInfo& info(const std::string& tensor) const {
    const auto found = tensors_.find(tensor);
    if (found == tensors_.end()) fail(name_, ": no tensor '", tensor, "'");
    return found->second;
  }

  /// Tensor names in sorted order.
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    result.reserve(tensors_.size());
    for (const auto& entry : tensors_) result.push_back(entry.first);
    return result;
  }

  /// The tensor's raw little-endian bytes (info(tensor).byte_count() of them).
  const std::uint8_t* bytes(const std::string& tensor) const { return data_ + info(tensor).begin; }

  /// Whether view<T>(tensor) would succeed: the dtype is dtype_of<T>(), the
  /// data is aligned for T and the host is little-endian. Throws like info()
  /// if there is no such tensor.
  template <typename T>
  bool can_view(const std::string& tensor) const {
    return view_problem<T>(info(tensor)).empty();
  }

  /// The tensor's elements in place, without copying. Throws if the dtype is
  /// not dtype_of<T>() or the bytes are not aligned for T; read() handles
  /// both cases by converting or copying.
  template <typename T>
  const T* view(const std::string& tensor) const {
    const TensorInfo& tensor_info = info(tensor);
    const std::string problem = view_problem<T>(tensor_info);
    if (!problem.empty())
      fail(name_, ": tensor '", tensor, "': cannot view in place: ", problem, "; use read()");
    return reinterpret_cast<const T*>(data_ + tensor_info.begin);
  }

  /// The tensor's elements converted to Scalar (any stored dtype to any
  /// floating-point or integer type). Throws if a value does not fit Scalar,
  /// e.g. NaN or 2.5 into an integer type, or 300 into uint8_t.
  template <typename Scalar>
  std::vector<Scalar> read(const std::string& tensor) const {
    std::vector<Scalar> values(info(tensor).element_count());
    read_into(tensor, values.data(), values.size());
    return values;
  }

  /// Like read() into caller memory; `count` must be the element count.
  template <typename Scalar>
  void read_into(const std::string& tensor, Scalar* dest, std::size_t count) const {
    const TensorInfo& tensor_info = info(tensor);
    const std::size_t expected = tensor_info.element_count();
    if (count != expected) {
      fail(name_, ": tensor '", tensor, "': read_into was given room for ", count,
           " elements but shape ", format_shape(tensor_info.shape), " has ", expected);
    }
    if (count != 0 && dest == nullptr)
      fail(name_, ": tensor '", tensor, "': read_into was given a null destination");
    detail::decode_elements(tensor_info.dtype, data_ + tensor_info.begin, dest, count,
                            name_ + ": tensor '" + tensor + "'");
  }

  /// A 2-D tensor as a row-major matrix (converting like read()).
  template <typename Scalar>
  Matrix<Scalar> read_matrix(const std::string& tensor) const {
    const TensorInfo& tensor_info = info(tensor);
    if (tensor_info.shape.size() != 2) {
      fail(name_, ": tensor '", tensor, "': expected a 2-D tensor, got shape ",
           format_shape(tensor_info.shape));
    }
    constexpr auto max_index = static_cast<std::size_t>(std::numeric_limits<Index>::max());
    if (tensor_info.shape[0] > max_index || tensor_info.shape[1] > max_index) {
      fail(name_, ": tensor '", tensor, "': shape ", format_shape(tensor_info.shape),
           " is too large for a matrix");
    }
    Matrix<Scalar> matrix(static_cast<Index>(tensor_info.shape[0]),
                          static_cast<Index>(tensor_info.shape[1]));
    read_into(tensor, matrix.data(), static_cast<std::size_t>(matrix.size()));
    return matrix;
  }

 private:
  SafetensorsFile() = default;

  template <typename T>
  std::string view_problem(const TensorInfo& tensor_info) const {
    if (tensor_info.dtype != dtype_of<T>()) {
      return std::string("it is ") + dtype_name(tensor_info.dtype) + ", not " +
             dtype_name(dtype_of<T>());
    }
    if (sizeof(T) > 1 && !detail::host_is_little_endian()) return "this host is not little-endian";
    const auto address = reinterpret_cast<std::uintptr_t>(data_ + tensor_info.begin);
    if (address % alignof(T) != 0) {
      return "its data is not aligned to " + std::to_string(alignof(T)) + " bytes";
    }
    return {};
  }

  /// Records the first duplicate key of the header objects that matter (the
  /// top level and each tensor / metadata entry): nlohmann::json keeps the
  /// last of duplicate keys silently, and for a tensor name that would hide
  /// which of two entries the file meant.
  struct DuplicateKeyFinder {
    std::set<std::string> top_level_keys;
    std::set<std::string> entry_keys;
    std::string current_entry;
    std::string duplicate;        // first duplicate key
    std::string duplicate_entry;  // its entry, empty for a top-level key
    bool too_deep = false;

    bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      using Event = nlohmann::json::parse_event_t;
      // depth counts enclosing containers: the top object starts at 0, its
      // keys are at 1, an entry's keys at 2, shape elements at 3. No valid
      // header has a container at depth 3 or more; dropping those keeps a
      // hostile, deeply nested header from costing memory, and too_deep makes
      // sure it is still rejected.
      if ((event == Event::object_start || event == Event::array_start) && depth >= 3) {
        too_deep = true;
        return false;
      }
      if (event == Event::object_start && depth == 1) entry_keys.clear();
      if (event == Event::key && duplicate.empty() && parsed.is_string()) {
        const auto& key = parsed.get_ref<const std::string&>();
        if (depth == 1) {
          current_entry = key;
          if (!top_level_keys.insert(key).second) duplicate = key;
        } else if (depth == 2) {
          if (!entry_keys.insert(key).second) {
            duplicate = key;
            duplicate_entry = current_entry;
          }
        }
      }
      return true;
    }
  };

  void parse() {
    const std::uint8_t* file = storage_->data();
    const std::size_t file_size = storage_->size();
    if (file_size < 8) {
      fail(name_, ": file is too short (", file_size, " bytes) to hold the 8-byte header length");
    }
    const auto header_size = detail::load_little_endian<std::uint64_t>(file);
    if (header_size > file_size - 8) {
      fail(name_, ": header length ", header_size, " exceeds the ", file_size - 8,
           " bytes after the length field (file truncated or not a safetensors file)");
    }
    const auto header_length = static_cast<std::size_t>(header_size);
    const char* header = reinterpret_cast<const char*>(file + 8);

    DuplicateKeyFinder finder;
    nlohmann::json root;
    try {
      root = nlohmann::json::parse(
          header, header + header_length,
          [&finder](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
            return finder(depth, event, parsed);
          },
          /*allow_exceptions=*/true);
    } catch (const nlohmann::json::exception& error) {
      fail(name_, ": header is not valid JSON: ", error.what());
    }
    if (!root.is_object()) fail(name_, ": header JSON is not an object but ", root.type_name());
    if (!finder.duplicate.empty()) {
      if (finder.duplicate_entry.empty()) {
        fail(name_, ": duplicate tensor name '", finder.duplicate, "' in the header");
      }
      fail(name_, ": entry '", finder.duplicate_entry, "' has a duplicate key '", finder.duplicate,
           "'");
    }
    if (finder.too_deep)
      fail(name_, ": header JSON nests deeper than any safetensors header (too deep)");

    data_ = file + 8 + header_length;
    const std::size_t data_size = file_size - 8 - header_length;
    for (auto entry = root.cbegin(); entry != root.cend(); ++entry) {
      if (entry.key() == "__metadata__") {
        parse_metadata(entry.value());
      } else {
        tensors_.emplace(entry.key(), parse_tensor(entry.key(), entry.value(), data_size));
      }
    }
    check_coverage(data_size);
  }

  void parse_metadata(const nlohmann::json& value) {
    if (!value.is_object()) fail(name_, ": __metadata__ is not an object but ", value.type_name());
    for (auto entry = value.cbegin(); entry != value.cend(); ++entry) {
      if (!entry.value().is_string()) {
        fail(name_, ": __metadata__ value of '", entry.key(), "' is not a string but ",
             entry.value().type_name());
      }
      metadata_.emplace(entry.key(), entry.value().get<std::string>());
    }
  }

  TensorInfo parse_tensor(const std::string& tensor, const nlohmann::json& entry,
                          std::size_t data_size) const {
    const std::string where = name_ + ": tensor '" + tensor + "'";
    if (!entry.is_object()) fail(where, ": entry is not an object but ", entry.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (entry.find(field) == entry.end()) fail(where, ": missing field '", field, "'");
    }

    TensorInfo tensor_info;
    tensor_info.name = tensor;

    const nlohmann::json& dtype = entry.at("dtype");
    if (!dtype.is_string()) fail(where, ": field 'dtype' is not a string but ", dtype.type_name());
    tensor_info.dtype = parse_dtype(dtype.get<std::string>(), where);

    const nlohmann::json& shape = entry.at("shape");
    if (!shape.is_array()) fail(where, ": field 'shape' is not an array but ", shape.type_name());
    for (const nlohmann::json& dim : shape) {
      tensor_info.shape.push_back(to_size(dim, where, "shape"));
    }

    const nlohmann::json& offsets = entry.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2) {
      fail(where, ": field 'data_offsets' must be an array of 2 unsigned integers, got ",
           offsets.dump());
    }
    tensor_info.begin = to_size(offsets[0], where, "data_offsets");
    tensor_info.end = to_size(offsets[1], where, "data_offsets");
    const std::string range = "data_offsets [" + std::to_string(tensor_info.begin) + ", " +
                              std::to_string(tensor_info.end) + "]";
    if (tensor_info.begin > tensor_info.end) fail(where, ": ", range, " has begin > end");
    if (tensor_info.end > data_size) {
      fail(where, ": ", range, " end beyond the data area of ", data_size, " bytes");
    }

    std::size_t needed = 0;
    if (!detail::checked_byte_count(tensor_info.shape, tensor_info.dtype, needed)) {
      fail(where, ": shape ", format_shape(tensor_info.shape), " of ",
           dtype_name(tensor_info.dtype), " overflows std::size_t");
    }
    const std::size_t held = tensor_info.end - tensor_info.begin;
    if (held != needed) {
      fail(where, ": ", range, " hold ", held, " bytes but shape ", format_shape(tensor_info.shape),
           " of ", dtype_name(tensor_info.dtype), " needs ", needed);
    }
    return tensor_info;
  }

  /// A JSON value that must be a non-negative integer fitting std::size_t.
  static std::size_t to_size(const nlohmann::json& value, const std::string& where,
                             const char* field) {
    // Non-negative integers parse as number_unsigned; negative ones, floats
    // and integers beyond 64 bits (parsed as floats) are rejected here.
    if (!value.is_number_unsigned()) {
      fail(where, ": field '", field, "' holds ", value.dump(),
           ", which is not a non-negative integer");
    }
    const auto number = value.get<std::uint64_t>();
    if (number > std::numeric_limits<std::size_t>::max()) {
      fail(where, ": field '", field, "' holds ", number, ", which overflows std::size_t");
    }
    return static_cast<std::size_t>(number);
  }

  /// The format requires the tensors to tile the data area exactly: no
  /// overlaps (one write would change two tensors), no gaps and no unused
  /// tail (bytes no tensor accounts for are a sign of a corrupt writer).
  void check_coverage(std::size_t data_size) const {
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const auto& entry : tensors_) by_offset.push_back(&entry.second);
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
    });
    std::size_t covered = 0;  // bytes [0, covered) belong to the tensors so far
    const TensorInfo* previous = nullptr;
    for (const TensorInfo* tensor_info : by_offset) {
      if (tensor_info->begin < covered) {
        fail(name_, ": tensor '", tensor_info->name, "' data_offsets [", tensor_info->begin, ", ",
             tensor_info->end, "] overlap tensor '", previous->name, "' data_offsets [",
             previous->begin, ", ", previous->end, "]");
      }
      if (tensor_info->begin > covered) {
        fail(name_, ": gap in the data area: bytes [", covered, ", ", tensor_info->begin,
             ") belong to no tensor (before tensor '", tensor_info->name, "')");
      }
      covered = tensor_info->end;
      previous = tensor_info;
    }
    if (covered != data_size) {
      fail(name_, ": unused bytes at the end of the data area: bytes [", covered, ", ", data_size,
           ") belong to no tensor");
    }
  }

  std::string name_;
  std::shared_ptr<const detail::FileBytes> storage_;
  const std::uint8_t* data_ = nullptr;  // start of the data area, inside storage_
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
};

/// Builds a safetensors file from tensors added one by one.
class SafetensorsWriter {
 public:
  void set_metadata(const std::string& key, const std::string& value) {
    check_utf8(key, "metadata key");
    check_utf8(value, "metadata value");
    metadata_[key] = value;
  }

  /// Adds a copy of `byte_count` little-endian bytes of `dtype` elements.
  void add_raw(const std::string& name, DType dtype, const Shape& shape, const void* data,
               std::size_t byte_count) {
    const std::size_t needed = checked_new_tensor(name, dtype, shape);
    if (byte_count != needed) {
      fail(where(name), ": got ", byte_count, " bytes but shape ", format_shape(shape), " of ",
           dtype_name(dtype), " needs ", needed);
    }
    if (byte_count != 0 && data == nullptr) fail(where(name), ": data is null");
    const auto* first = static_cast<const std::uint8_t*>(data);
    tensors_.emplace(name,
                     Entry{dtype, shape, std::vector<std::uint8_t>(first, first + byte_count)});
  }

  /// Adds elements stored as their own type (dtype_of<T>()).
  template <typename T>
  void add(const std::string& name, const Shape& shape, const T* data) {
    add_as(name, dtype_of<T>(), shape, data);
  }

  /// Adds elements converted to `dtype` (e.g. float -> BF16, rounding to
  /// nearest even). Throws if a value does not fit an integer dtype.
  template <typename Scalar>
  void add_as(const std::string& name, DType dtype, const Shape& shape, const Scalar* data) {
    const std::size_t bytes = checked_new_tensor(name, dtype, shape);
    const std::size_t count = bytes / dtype_size(dtype);
    if (count != 0 && data == nullptr) fail(where(name), ": data is null");
    std::vector<std::uint8_t> encoded(bytes);
    detail::encode_elements(data, dtype, encoded.data(), count, where(name));
    tensors_.emplace(name, Entry{dtype, shape, std::move(encoded)});
  }

  /// The complete file: the header padded with spaces so the data area
  /// starts 8-byte aligned, then the tensors back to back, widest dtype first
  /// and by name within a dtype size. Widest first keeps every tensor aligned
  /// to its element size without padding (which the format forbids), so
  /// readers can use all of them in place; the official writer does the same.
  std::vector<std::uint8_t> to_bytes() const {
    std::vector<std::uint8_t> file = header_bytes();
    for (const auto* entry : data_order()) {
      file.insert(file.end(), entry->second.data.begin(), entry->second.data.end());
    }
    return file;
  }

  /// Writes the file to `path` + ".tmp", then renames it over `path`, so a
  /// crash never leaves a half-written checkpoint under the real name.
  void save(const std::string& path) const {
    const std::string temporary = path + ".tmp";
    {
      std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
      if (!out)
        fail(path, ": cannot open '", temporary, "' for writing: ", detail::errno_message(errno));
      const std::vector<std::uint8_t> header = header_bytes();
      write_all(out, header);
      for (const auto* entry : data_order()) write_all(out, entry->second.data);
      out.close();
      if (!out) {
        std::remove(temporary.c_str());
        fail(path, ": writing '", temporary, "' failed (disk full?)");
      }
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
      const int error = errno;
      std::remove(temporary.c_str());
      fail(path, ": cannot rename '", temporary, "' to it: ", detail::errno_message(error));
    }
  }

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    std::vector<std::uint8_t> data;
  };

  static std::string where(const std::string& name) {
    return "SafetensorsWriter: tensor '" + name + "'";
  }

  /// nlohmann::json refuses to write strings that are not UTF-8; find out
  /// when the string is added rather than when the file is written.
  static void check_utf8(const std::string& text, const char* what) {
    try {
      (void)nlohmann::json(text).dump();
    } catch (const nlohmann::json::exception& error) {
      fail("SafetensorsWriter: ", what, " is not valid UTF-8: ", error.what());
    }
  }

  /// Checks a new tensor's name and shape and returns its byte count.
  std::size_t checked_new_tensor(const std::string& name, DType dtype, const Shape& shape) const {
    if (name == "__metadata__") fail(where(name), ": the name is reserved for metadata");
    if (tensors_.count(name) != 0) fail(where(name), ": duplicate tensor name");
    check_utf8(name, "tensor name");
    std::size_t bytes = 0;
    if (!detail::checked_byte_count(shape, dtype, bytes)) {
      fail(where(name), ": shape ", format_shape(shape), " of ", dtype_name(dtype),
           " overflows std::size_t");
    }
    return bytes;
  }

  /// The tensors in the order their bytes are written (see to_bytes()).
  std::vector<const std::pair<const std::string, Entry>*> data_order() const {
    std::vector<const std::pair<const std::string, Entry>*> order;
    order.reserve(tensors_.size());
    for (const auto& entry : tensors_) order.push_back(&entry);
    // tensors_ is sorted by name already; a stable sort keeps that order
    // within each dtype size.
    std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
      return dtype_size(a->second.dtype) > dtype_size(b->second.dtype);
    });
    return order;
  }

  std::vector<std::uint8_t> header_bytes() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto* entry : data_order()) {
      // Cannot overflow: all these bytes exist in memory.
      const std::size_t end = offset + entry->second.data.size();
      header[entry->first] = {{"dtype", dtype_name(entry->second.dtype)},
                              {"shape", entry->second.shape},
                              {"data_offsets", {offset, end}}};
      offset = end;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<std::uint8_t> bytes(8 + text.size());
    detail::store_little_endian(static_cast<std::uint64_t>(text.size()), bytes.data());
    std::memcpy(bytes.data() + 8, text.data(), text.size());
    return bytes;
  }

  static void write_all(std::ofstream& out, const std::vector<std::uint8_t>& bytes) {
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }

  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> tensors_;
};

}  // namespace xlstm::io
