// Reading safetensors files, the checkpoint format of PyTorch / Hugging Face
// models: SafetensorsFile validates a file's header and byte ranges and reads
// its tensors (TensorInfo), in place or converted to the caller's type.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/io/dtype.hpp"
#include "xlstm/io/mapped_file.hpp"

// Layout: an 8-byte little-endian header length N, N bytes of JSON describing
// every tensor (dtype, shape, byte range), then the data area holding the
// tensors' raw little-endian bytes back to back.
//
// Checkpoints arrive from elsewhere, so the reader trusts nothing: every
// defect of the header or of the byte ranges becomes an xlstm::Error naming the
// file and the defect, and no input makes it read out of bounds. Files are
// memory-mapped, so opening a large checkpoint costs nothing until tensors are
// read, and aligned tensors of the right type can be used in place.

namespace xlstm::io {

/// The same as xlstm::shape_string (core/tensor.hpp), kept under the name
/// this header has always offered.
inline std::string format_shape(const Shape& shape) { return shape_string(shape); }

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
          shape_string(shape), " overflows std::size_t");
    return count;
  }
  /// element_count() * dtype_size(dtype), which a validated file guarantees
  /// to equal end - begin.
  std::size_t byte_count() const {
    std::size_t bytes = 0;
    check(detail::checked_byte_count(shape, dtype, bytes), "tensor '", name, "': shape ",
          shape_string(shape), " of ", dtype_name(dtype), " overflows std::size_t bytes");
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

  /// Drops the tensor's pages from resident memory when the file is mapped
  /// (they are read from the file again if used): for a loader that has made
  /// its own copy (e.g. quantised while loading). Pointers stay valid.
  void release(const std::string& tensor) const {
    const TensorInfo& tensor_info = info(tensor);
    storage_->release(std::size_t(data_ - storage_->data()) + tensor_info.begin,
                      tensor_info.byte_count());
  }

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
           " elements but shape ", shape_string(tensor_info.shape), " has ", expected);
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
           shape_string(tensor_info.shape));
    }
    constexpr auto max_index = static_cast<std::size_t>(std::numeric_limits<Index>::max());
    if (tensor_info.shape[0] > max_index || tensor_info.shape[1] > max_index) {
      fail(name_, ": tensor '", tensor, "': shape ", shape_string(tensor_info.shape),
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
      fail(where, ": shape ", shape_string(tensor_info.shape), " of ",
           dtype_name(tensor_info.dtype), " overflows std::size_t");
    }
    const std::size_t held = tensor_info.end - tensor_info.begin;
    if (held != needed) {
      fail(where, ": ", range, " hold ", held, " bytes but shape ", shape_string(tensor_info.shape),
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

}  // namespace xlstm::io
