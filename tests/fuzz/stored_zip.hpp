// A minimal zip writer for the PyTorch checkpoint tests and fuzz target
// (test_torch_checkpoint.cpp, fuzz_entries.hpp): archives of files stored
// uncompressed, as torch.save writes them, with correct CRC-32s, so that a test
// can present one defect at a time (a compression method, a crafted pickle, a
// storage of the wrong size) behind an otherwise valid archive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "xlstm/io/zip_archive.hpp"  // detail::crc32

namespace fuzz {

/// One file of the archive; `method` is written as the compression method
/// (the bytes are stored as given whatever it says).
struct ZipFile {
  std::string name;
  std::vector<std::uint8_t> bytes;
  std::uint16_t method = 0;
};

/// A zip archive of `files`: local headers and data, the central directory,
/// the end-of-central-directory record.
inline std::vector<std::uint8_t> stored_zip(const std::vector<ZipFile>& files) {
  std::vector<std::uint8_t> archive, directory;
  auto put = [](std::vector<std::uint8_t>& out, std::uint32_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
  };
  auto put_name = [](std::vector<std::uint8_t>& out, const std::string& name) {
    out.insert(out.end(), name.begin(), name.end());
  };
  for (const ZipFile& file : files) {
    const auto offset = static_cast<std::uint32_t>(archive.size());
    const auto size = static_cast<std::uint32_t>(file.bytes.size());
    const std::uint32_t crc = xlstm::io::detail::crc32(file.bytes.data(), file.bytes.size());
    const auto name_length = static_cast<std::uint32_t>(file.name.size());
    // The fields a local header and a central directory record share:
    // version needed, flags, method, time and date, CRC-32, sizes, name and
    // extra-field lengths.
    auto put_common_fields = [&](std::vector<std::uint8_t>& out) {
      put(out, 20, 2);
      put(out, 0, 2);
      put(out, file.method, 2);
      put(out, 0, 4);
      put(out, crc, 4);
      put(out, size, 4);
      put(out, size, 4);
      put(out, name_length, 2);
      put(out, 0, 2);
    };
    put(archive, 0x04034b50, 4);
    put_common_fields(archive);
    put_name(archive, file.name);
    archive.insert(archive.end(), file.bytes.begin(), file.bytes.end());
    // The central record adds version made by (before), then comment
    // length, disk, attributes and the offset of the local header.
    put(directory, 0x02014b50, 4);
    put(directory, 20, 2);
    put_common_fields(directory);
    put(directory, 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 4);
    put(directory, offset, 4);
    put_name(directory, file.name);
  }
  const auto directory_offset = static_cast<std::uint32_t>(archive.size());
  const auto count = static_cast<std::uint32_t>(files.size());
  archive.insert(archive.end(), directory.begin(), directory.end());
  put(archive, 0x06054b50, 4);
  put(archive, 0, 2);
  put(archive, 0, 2);
  put(archive, count, 2);
  put(archive, count, 2);
  put(archive, static_cast<std::uint32_t>(directory.size()), 4);
  put(archive, directory_offset, 4);
  put(archive, 0, 2);
  return archive;
}

}  // namespace fuzz
