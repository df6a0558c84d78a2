// Writing safetensors files: SafetensorsWriter collects tensors (converting
// them to the stored dtype on request) and returns the file as bytes or saves
// it, never leaving a half-written file under the real name. The format is
// described in safetensors_reader.hpp.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/io/dtype.hpp"
#include "xlstm/io/file_path.hpp"
#include "xlstm/io/mapped_file.hpp"  // detail::errno_message

namespace xlstm::io {

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
      fail(where(name), ": got ", byte_count, " bytes but shape ", shape_string(shape), " of ",
           dtype_name(dtype), " needs ", needed);
    }
    if (byte_count != 0 && data == nullptr) fail(where(name), ": data is null");
    const auto* first = static_cast<const std::uint8_t*>(data);
    tensors_.emplace(name, Entry{dtype, shape, std::vector<std::uint8_t>(first, first + byte_count),
                                 byte_count, nullptr});
  }

  /// Receives a tensor's bytes as they are produced, in order.
  using ByteSink = std::function<void(const std::uint8_t* bytes, std::size_t count)>;
  /// Hands all of a tensor's bytes to the sink, in order, piece by piece.
  using Producer = std::function<void(const ByteSink& sink)>;

  /// Adds a tensor whose bytes are produced when the file is written, not
  /// now: the writer holds no copy, so a model larger than the free memory
  /// can be saved (io::save_large_model). Whatever `produce` reads must live
  /// and stay unchanged until save() or to_bytes(); producing other than
  /// the shape's byte count is an Error then.
  void add_streamed(const std::string& name, DType dtype, const Shape& shape, Producer produce) {
    const std::size_t bytes = checked_new_tensor(name, dtype, shape);
    if (!produce) fail(where(name), ": the producer is empty");
    tensors_.emplace(name, Entry{dtype, shape, {}, bytes, std::move(produce)});
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
    tensors_.emplace(name, Entry{dtype, shape, std::move(encoded), bytes, nullptr});
  }

  /// The complete file: the header padded with spaces so the data area
  /// starts 8-byte aligned, then the tensors back to back, widest dtype first
  /// and by name within a dtype size. Widest first keeps every tensor aligned
  /// to its element size without padding (which the format forbids), so
  /// readers can use all of them in place; the official writer does the same.
  std::vector<std::uint8_t> to_bytes() const {
    std::vector<std::uint8_t> file = header_bytes();
    for (const auto* entry : data_order()) {
      write_entry(*entry, [&](const std::uint8_t* bytes, std::size_t count) {
        file.insert(file.end(), bytes, bytes + count);
      });
    }
    return file;
  }

  /// Writes the file to `path` + ".tmp", then renames it over `path`, so a
  /// crash never leaves a half-written checkpoint under the real name.
  ///
  /// std::filesystem rather than std::rename: UTF-8 paths work on Windows
  /// too, and there it replaces an existing file as on POSIX, except a file
  /// that is still mapped (a live SafetensorsFile of it): Windows refuses.
  void save(const std::string& path) const {
    const std::string temporary = path + ".tmp";
    const std::filesystem::path native_temporary = detail::utf8_path(temporary);
    std::error_code ignored;
    {
      std::ofstream out(native_temporary, std::ios::binary | std::ios::trunc);
      if (!out)
        fail(path, ": cannot open '", temporary, "' for writing: ", detail::errno_message(errno));
      const std::vector<std::uint8_t> header = header_bytes();
      write_all(out, header);
      try {
        for (const auto* entry : data_order()) {
          write_entry(*entry, [&](const std::uint8_t* bytes, std::size_t count) {
            out.write(reinterpret_cast<const char*>(bytes), static_cast<std::streamsize>(count));
          });
        }
      } catch (...) {
        out.close();
        std::filesystem::remove(native_temporary, ignored);
        throw;
      }
      out.close();
      if (!out) {
        std::filesystem::remove(native_temporary, ignored);
        fail(path, ": writing '", temporary, "' failed (disk full?)");
      }
    }
    std::error_code error;
    std::filesystem::rename(native_temporary, detail::utf8_path(path), error);
    if (error) {
      std::filesystem::remove(native_temporary, ignored);
#ifdef _WIN32
      // Unlike POSIX, Windows refuses to replace a file that is mapped.
      fail(path, ": cannot rename '", temporary, "' to it: ", error.message(),
           " (Windows cannot replace a file while it is open or mapped, e.g. by a live "
           "SafetensorsFile or CheckpointFiles of it)");
#else
      fail(path, ": cannot rename '", temporary, "' to it: ", error.message());
#endif
    }
  }

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    std::vector<std::uint8_t> data;  ///< the bytes, unless produced when written
    std::size_t size = 0;            ///< in bytes
    Producer produce;
  };

  /// Hands an entry's bytes to `sink`: its copy, or what its producer makes,
  /// checked against the size the header announced.
  static void write_entry(const std::pair<const std::string, Entry>& entry, const ByteSink& sink) {
    const Entry& e = entry.second;
    if (!e.produce) {
      sink(e.data.data(), e.data.size());
      return;
    }
    std::size_t produced = 0;
    e.produce([&](const std::uint8_t* bytes, std::size_t count) {
      if (count > e.size - produced) {
        fail(where(entry.first), ": the producer gave more than the ", e.size, " bytes of shape ",
             shape_string(e.shape), " of ", dtype_name(e.dtype));
      }
      produced += count;
      sink(bytes, count);
    });
    if (produced != e.size) {
      fail(where(entry.first), ": the producer gave ", produced, " bytes, but shape ",
           shape_string(e.shape), " of ", dtype_name(e.dtype), " needs ", e.size);
    }
  }

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
      fail(where(name), ": shape ", shape_string(shape), " of ", dtype_name(dtype),
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
      // Streamed tensors need not exist in memory, so the sum is checked.
      if (entry->second.size > std::numeric_limits<std::size_t>::max() - offset) {
        fail("SafetensorsWriter: the tensors' bytes add up beyond std::size_t");
      }
      const std::size_t end = offset + entry->second.size;
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
