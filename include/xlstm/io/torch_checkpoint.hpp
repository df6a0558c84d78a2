// Reading PyTorch checkpoints (.ckpt, .pt, .pth files written by torch.save):
// TorchCheckpoint finds the state dict, validates its tensors against the
// archive and reads them, and hands them to the safetensors loaders as an
// in-memory SafetensorsFile (to_safetensors), optionally renaming the keys.
#pragma once

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/io/dtype.hpp"
#include "xlstm/io/file_path.hpp"
#include "xlstm/io/mapped_file.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/torch_pickle.hpp"
#include "xlstm/io/zip_archive.hpp"

// Layout of a torch.save file (PyTorch 1.6 and later): a zip archive of
// stored files under one top-level folder whose name varies:
//   <folder>/data.pkl     the pickled object (torch_pickle.hpp)
//   <folder>/data/<key>   the raw little-endian bytes of each storage
//   <folder>/version, <folder>/byteorder ("little"; newer PyTorch only), ...
// A tensor in the pickle names its storage by key and is a strided view of
// it: storage offset, shape and strides in elements. Several tensors may share
// one storage (views of one tensor).
//
// The object is a state dict ({name: tensor}) or a dict holding one under
// "state_dict" with other entries beside it, as PyTorch Lightning saves
// ("hyper_parameters", "epoch", ...); both are found. The legacy non-zip
// format (torch.save with _use_new_zipfile_serialization=False) and
// TorchScript archives are not read.

namespace xlstm::io {

/// Renames a state dict key on its way into a SafetensorsFile.
using KeyRename = std::function<std::string(const std::string&)>;

/// `text` with every occurrence of `part` removed, found left to right
/// without rescanning, as Python's text.replace(part, "") does.
inline std::string remove_substring(const std::string& text, const std::string& part) {
  check(!part.empty(), "remove_substring: argument 'part' must not be empty");
  std::string result;
  std::size_t from = 0;
  for (std::size_t found; (found = text.find(part, from)) != std::string::npos;) {
    result.append(text, from, found - from);
    from = found + part.size();
  }
  result.append(text, from, std::string::npos);
  return result;
}

/// TiRex's key rule: its checkpoints name the blocks "block_stack.blocks.N..."
/// while its model has them as "blocks.N...", so the loader deletes every
/// "block_stack." from the keys (tirex/models/tirex.py, on_load_checkpoint).
inline std::string tirex_state_dict_key(const std::string& key) {
  return remove_substring(key, "block_stack.");
}

/// Whether `path` names a PyTorch checkpoint by its extension (.ckpt, .pt or
/// .pth, any case) rather than a safetensors file.
inline bool is_torch_checkpoint_path(const std::string& path) {
  std::string extension = detail::utf8_string(detail::utf8_path(path).extension());
  for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return extension == ".ckpt" || extension == ".pt" || extension == ".pth";
}

/// A validated PyTorch checkpoint, memory-mapped or in memory.
///
/// Copies are cheap and share the file's bytes. Opening reads every byte
/// once (the CRC-32 of each archive entry) and checks every tensor of the
/// pickle against its storage, so reading a tensor never leaves the file.
class TorchCheckpoint {
 public:
  /// Maps (or reads) `path` and validates it.
  static TorchCheckpoint open(const std::string& path) {
    TorchCheckpoint checkpoint;
    checkpoint.name_ = path;
    checkpoint.storage_ = detail::load_file(path);
    checkpoint.parse();
    return checkpoint;
  }

  /// Validates an in-memory file; `name` stands for the file in messages.
  static TorchCheckpoint from_bytes(std::vector<std::uint8_t> bytes,
                                    std::string name = "<memory>") {
    TorchCheckpoint checkpoint;
    checkpoint.name_ = std::move(name);
    checkpoint.storage_ = std::make_shared<const detail::FileBytes>(std::move(bytes));
    checkpoint.parse();
    return checkpoint;
  }

  /// The path or given name; every error message starts with it.
  const std::string& name() const { return name_; }

  /// The whole pickled object (always a dict).
  const PickledValue& root() const { return pickle_.root; }
  /// The state dict: root()["state_dict"] if that is a dict, else root().
  const PickledValue& state_dict() const {
    const PickledValue* nested = root().find("state_dict");
    return nested != nullptr && nested->is(PickledValue::Kind::dict) ? *nested : root();
  }
  /// root()["hyper_parameters"] (a Lightning checkpoint's config), or null.
  const PickledValue* hyper_parameters() const { return root().find("hyper_parameters"); }
  /// Every tensor of the pickle, indexed by PickledValue::tensor_index().
  const std::vector<TorchTensor>& tensors() const { return pickle_.tensors; }

  // The tensors of the state dict by name. Entries of the state dict that are
  // not tensors under string keys are not listed (they stay in state_dict()).

  bool contains(const std::string& tensor) const { return by_name_.count(tensor) != 0; }
  std::size_t size() const { return by_name_.size(); }
  /// Tensor names in sorted order.
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    result.reserve(by_name_.size());
    for (const auto& entry : by_name_) result.push_back(entry.first);
    return result;
  }
  const TorchTensor& info(const std::string& tensor) const {
    return pickle_.tensors[index_of(tensor)];
  }

  /// The tensor's elements as contiguous row-major little-endian bytes
  /// (info(tensor).byte_count() of them), gathered if the tensor is strided.
  std::vector<std::uint8_t> bytes(const std::string& tensor) const {
    return contiguous_bytes(index_of(tensor));
  }

  /// The tensor's elements converted to Scalar, like SafetensorsFile::read.
  template <typename Scalar>
  std::vector<Scalar> read(const std::string& tensor) const {
    const std::size_t index = index_of(tensor);
    const TorchTensor& info = pickle_.tensors[index];
    std::vector<Scalar> values(info.element_count());
    const std::uint8_t* data = contiguous_data(index);
    std::vector<std::uint8_t> gathered;
    if (data == nullptr) {
      gathered = contiguous_bytes(index);
      data = gathered.data();
    }
    detail::decode_elements(info.dtype, data, values.data(), values.size(),
                            name_ + ": tensor '" + tensor + "'");
    return values;
  }

  /// The state dict's tensors as an in-memory safetensors file named like
  /// this checkpoint, each key passed through `rename` if given (e.g.
  /// tirex_state_dict_key), for load_module / load_parameters /
  /// CheckpointFiles::from_file. Copies the tensors. Throws if two keys get
  /// the same name.
  SafetensorsFile to_safetensors(const KeyRename& rename = nullptr) const {
    SafetensorsWriter writer;
    std::map<std::string, std::string> renamed_from;
    for (const auto& [key, index] : by_name_) {
      const std::string new_key = rename ? rename(key) : key;
      const auto [previous, fresh] = renamed_from.emplace(new_key, key);
      if (!fresh) {
        fail(name_, ": tensors '", previous->second, "' and '", key, "' are both renamed to '",
             new_key, "'");
      }
      const TorchTensor& tensor = pickle_.tensors[index];
      if (const std::uint8_t* data = contiguous_data(index)) {
        writer.add_raw(new_key, tensor.dtype, tensor.shape, data, tensor.byte_count());
      } else {
        const std::vector<std::uint8_t> gathered = contiguous_bytes(index);
        writer.add_raw(new_key, tensor.dtype, tensor.shape, gathered.data(), gathered.size());
      }
    }
    return SafetensorsFile::from_bytes(writer.to_bytes(), name_);
  }

 private:
  TorchCheckpoint() = default;

  std::size_t index_of(const std::string& tensor) const {
    const auto found = by_name_.find(tensor);
    if (found == by_name_.end()) fail(name_, ": no tensor '", tensor, "' in the state dict");
    return found->second;
  }

  /// The storage bytes of tensor `index` where its first element is.
  const std::uint8_t* first_element(std::size_t index) const {
    const TorchTensor& tensor = pickle_.tensors[index];
    return storage_->data() + storage_begin_[index] +
           tensor.storage_offset * dtype_size(tensor.dtype);
  }
  /// The tensor's bytes in place if it is contiguous, else null.
  const std::uint8_t* contiguous_data(std::size_t index) const {
    return pickle_.tensors[index].is_contiguous() ? first_element(index) : nullptr;
  }

  std::vector<std::uint8_t> contiguous_bytes(std::size_t index) const {
    const TorchTensor& tensor = pickle_.tensors[index];
    std::vector<std::uint8_t> result(tensor.byte_count());
    if (result.empty()) return result;
    if (const std::uint8_t* data = contiguous_data(index)) {
      std::memcpy(result.data(), data, result.size());
      return result;
    }
    // Strided: visit the elements in row-major order, advancing the last
    // dimension's index like an odometer; parse() checked that the farthest
    // element lies inside the storage.
    const std::size_t element = dtype_size(tensor.dtype);
    const std::uint8_t* first = first_element(index);
    const std::size_t dims = tensor.shape.size();
    std::vector<std::size_t> position(dims, 0);
    std::size_t source = 0;  // in elements from the first one
    for (std::size_t out = 0; out < result.size(); out += element) {
      std::memcpy(result.data() + out, first + source * element, element);
      for (std::size_t d = dims; d-- > 0;) {
        if (++position[d] < tensor.shape[d]) {
          source += tensor.strides[d];
          break;
        }
        source -= (tensor.shape[d] - 1) * tensor.strides[d];
        position[d] = 0;
      }
    }
    return result;
  }

  void parse() {
    const std::uint8_t* file = storage_->data();
    const std::size_t file_size = storage_->size();
    static const std::uint8_t zip_magic[] = {'P', 'K', 3, 4};
    if (file_size < 4 || std::memcmp(file, zip_magic, 4) != 0) {
      fail(name_,
           ": not a zip archive, as torch.save writes since PyTorch 1.6 (the legacy "
           "format and other files are not read)");
    }
    const std::vector<ZipEntry> entries = list_stored_zip_entries(file, file_size, name_);

    // The pickle is <folder>/data.pkl, the one entry of that name one level down.
    const ZipEntry* pickle_entry = nullptr;
    for (const ZipEntry& entry : entries) {
      const std::size_t slash = entry.name.find('/');
      if (slash != std::string::npos && slash > 0 && entry.name.substr(slash) == "/data.pkl") {
        if (pickle_entry != nullptr) {
          fail(name_, ": two pickles, '", pickle_entry->name, "' and '", entry.name, "'");
        }
        pickle_entry = &entry;
      }
    }
    if (pickle_entry == nullptr) fail(name_, ": the archive has no <folder>/data.pkl");
    const std::string folder = pickle_entry->name.substr(0, pickle_entry->name.find('/') + 1);
    std::map<std::string, const ZipEntry*> by_name;
    for (const ZipEntry& entry : entries) by_name[entry.name] = &entry;

    const auto byteorder = by_name.find(folder + "byteorder");
    if (byteorder != by_name.end()) {
      const ZipEntry& entry = *byteorder->second;
      const std::string order(reinterpret_cast<const char*>(file) + entry.offset, entry.size);
      if (order != "little") {
        fail(name_, ": byte order '", order, "' (only little-endian checkpoints are read)");
      }
    }

    pickle_ = read_torch_pickle(file + pickle_entry->offset, pickle_entry->size,
                                name_ + ": " + pickle_entry->name);
    if (!pickle_.root.is(PickledValue::Kind::dict)) {
      fail(name_, ": ", pickle_entry->name, ": the pickled object is a ", pickle_.root.describe(),
           ", not a dict (a state dict or a checkpoint holding one)");
    }

    storage_begin_.reserve(pickle_.tensors.size());
    for (std::size_t index = 0; index < pickle_.tensors.size(); ++index) {
      const TorchTensor& tensor = pickle_.tensors[index];
      const std::string entry_name = folder + "data/" + tensor.storage_key;
      const auto found = by_name.find(entry_name);
      if (found == by_name.end()) {
        fail(name_, ": tensor ", index, " refers to storage '", tensor.storage_key,
             "', but the archive has no entry '", entry_name, "'");
      }
      check_tensor_bounds(tensor, index, found->second->size, file_size);
      storage_begin_.push_back(found->second->offset);
    }

    for (const PickledValue::Entry& entry : state_dict().entries()) {
      if (entry.key.is(PickledValue::Kind::string) && entry.value.is(PickledValue::Kind::tensor)) {
        by_name_[entry.key.as_string()] = entry.value.tensor_index();
      }
    }
  }

  /// Every element of the tensor must lie in its storage, and the storage in
  /// its archive entry of `entry_size` bytes. A tensor may repeat elements
  /// (stride 0, as torch's expand() makes), but reading it copies them, so it
  /// may not have more elements than its storage or than the file has bytes:
  /// a file of a few bytes must not be able to ask for terabytes.
  void check_tensor_bounds(const TorchTensor& tensor, std::size_t index, std::size_t entry_size,
                           std::size_t file_size) const {
    const std::string where =
        xlstm::detail::concat(name_, ": tensor ", index, " (storage '", tensor.storage_key, "')");
    std::size_t storage_bytes = 0;
    if (!detail::checked_multiply(tensor.storage_elements, dtype_size(tensor.dtype),
                                  storage_bytes) ||
        storage_bytes > entry_size) {
      fail(where, ": ", tensor.storage_elements, " elements of ", dtype_name(tensor.dtype),
           " do not fit the storage's ", entry_size, " bytes");
    }
    std::size_t count = 0;
    if (!detail::checked_byte_count(tensor.shape, tensor.dtype, count)) {
      fail(where, ": shape ", shape_string(tensor.shape), " of ", dtype_name(tensor.dtype),
           " overflows std::size_t bytes");
    }
    const std::size_t elements = count / dtype_size(tensor.dtype);
    if (elements > tensor.storage_elements && elements > file_size) {
      fail(where, ": shape ", shape_string(tensor.shape), " has ", elements,
           " elements, more than its storage (", tensor.storage_elements,
           ") and than the file has bytes (", file_size, ")");
    }
    if (count == 0) {  // no element to read; the offset must still be in range
      if (tensor.storage_offset > tensor.storage_elements) {
        fail(where, ": storage offset ", tensor.storage_offset, " is beyond the storage's ",
             tensor.storage_elements, " elements");
      }
      return;
    }
    // The farthest element: offset + sum of (size - 1) * stride, without overflow.
    std::size_t last = tensor.storage_offset;
    bool fits = true;
    for (std::size_t d = 0; d < tensor.shape.size() && fits; ++d) {
      std::size_t span = 0;
      fits = detail::checked_multiply(tensor.shape[d] - 1, tensor.strides[d], span) &&
             span <= std::numeric_limits<std::size_t>::max() - last;
      if (fits) last += span;
    }
    if (!fits || last >= tensor.storage_elements) {
      fail(where, ": shape ", shape_string(tensor.shape), " with strides ",
           shape_string(tensor.strides), " from storage offset ", tensor.storage_offset,
           " reaches beyond the storage's ", tensor.storage_elements, " elements");
    }
  }

  std::string name_;
  std::shared_ptr<const detail::FileBytes> storage_;
  TorchPickle pickle_;
  /// Byte offset in the file of each tensor's storage.
  std::vector<std::size_t> storage_begin_;
  /// State dict name -> index into pickle_.tensors.
  std::map<std::string, std::size_t> by_name_;
};

}  // namespace xlstm::io
