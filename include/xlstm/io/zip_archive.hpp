// Reading the directory of a zip archive whose files are stored uncompressed,
// as torch.save writes them: list_stored_zip_entries() validates the archive
// and says where each file's bytes are, so they can be used in place.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/io/dtype.hpp"  // detail::load_little_endian

// Layout (PKWARE APPNOTE): each file is a local header (signature, sizes,
// name, extra field) followed by its bytes; after the files comes the central
// directory, one record per file (method, CRC-32, sizes, name, offset of the
// local header); the end-of-central-directory record (EOCD), the last 22 bytes
// before an optional comment, says where the central directory is.
//
// The central directory is the authority: torch.save sets the "data
// descriptor" flag, so the sizes in the local headers may be zero. The local
// header is still read for the length of its name and extra field (torch pads
// the extra field so that tensor data starts 64-byte aligned).
//
// Refused rather than half-supported: compressed or encrypted entries, archives
// split over several disks, and ZIP64 archives (needed only beyond 4 GiB or
// 65535 files; torch adds ZIP64 records to every archive, but below those
// limits the classic records it also writes hold the true values).

namespace xlstm::io {

/// One file of a stored (uncompressed) zip archive.
struct ZipEntry {
  std::string name;
  /// Where the file's bytes are: [offset, offset + size) of the archive.
  std::size_t offset = 0, size = 0;
};

namespace detail {

/// The CRC-32 of `size` bytes (the checksum zip uses: reflected polynomial
/// 0xEDB88320, initial and final value 0xFFFFFFFF).
inline std::uint32_t crc32(const std::uint8_t* data, std::size_t size) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

constexpr std::uint32_t kZipLocalHeaderSignature = 0x04034b50;
constexpr std::uint32_t kZipCentralHeaderSignature = 0x02014b50;
constexpr std::uint32_t kZipEndOfDirectorySignature = 0x06054b50;
constexpr std::size_t kZipLocalHeaderSize = 30;
constexpr std::size_t kZipCentralHeaderSize = 46;
constexpr std::size_t kZipEndOfDirectorySize = 22;

/// Offset of the EOCD record: the last signature whose comment length reaches
/// exactly the end of the file. Throws if there is none.
inline std::size_t find_zip_end_of_directory(const std::uint8_t* bytes, std::size_t size,
                                             const std::string& where) {
  if (size < kZipEndOfDirectorySize) {
    fail(where, ": file is too short (", size, " bytes) to be a zip archive (at least ",
         kZipEndOfDirectorySize, ")");
  }
  // The comment is at most 65535 bytes, so the record starts no earlier than this.
  const std::size_t last = size - kZipEndOfDirectorySize;
  const std::size_t first = last > 0xFFFF ? last - 0xFFFF : 0;
  for (std::size_t at = last + 1; at-- > first;) {
    if (load_little_endian<std::uint32_t>(bytes + at) == kZipEndOfDirectorySignature &&
        load_little_endian<std::uint16_t>(bytes + at + 20) == last - at) {
      return at;
    }
  }
  fail(where, ": no end-of-central-directory record (not a zip archive, or truncated)");
}

/// Reads the local header of `entry` (whose offset is that of the header) and
/// sets entry.offset to the start of its bytes.
inline void locate_zip_entry_data(const std::uint8_t* bytes, std::size_t directory_offset,
                                  std::uint16_t method, ZipEntry& entry, const std::string& where) {
  const std::string what = where + ": entry '" + entry.name + "'";
  const std::size_t header = entry.offset;
  if (header > directory_offset || directory_offset - header < kZipLocalHeaderSize) {
    fail(what, ": local header at byte ", header, " does not fit before the central directory at ",
         directory_offset);
  }
  const std::uint8_t* local = bytes + header;
  if (load_little_endian<std::uint32_t>(local) != kZipLocalHeaderSignature) {
    fail(what, ": no local header signature at byte ", header);
  }
  if (load_little_endian<std::uint16_t>(local + 8) != method) {
    fail(what, ": the local header's compression method ",
         load_little_endian<std::uint16_t>(local + 8), " differs from the central directory's ",
         method);
  }
  const std::size_t name_length = load_little_endian<std::uint16_t>(local + 26);
  const std::size_t extra_length = load_little_endian<std::uint16_t>(local + 28);
  // All terms are below 2^32 + 2^17, so the sums cannot overflow a 64-bit size.
  const std::uint64_t data_begin =
      std::uint64_t(header) + kZipLocalHeaderSize + name_length + extra_length;
  const std::uint64_t data_end = data_begin + entry.size;
  if (data_end > directory_offset) {
    fail(what, ": its ", entry.size, " bytes from byte ", data_begin,
         " run past the start of the central directory at byte ", directory_offset);
  }
  const std::string local_name(reinterpret_cast<const char*>(local) + kZipLocalHeaderSize,
                               name_length);
  if (local_name != entry.name) {
    fail(what, ": the local header names it '", local_name, "'");
  }
  entry.offset = static_cast<std::size_t>(data_begin);
}

}  // namespace detail

/// The files of the zip archive `bytes[0, size)`, in central-directory order,
/// each checked against its CRC-32. `where` (e.g. the file name) starts every
/// error message. Throws Error for anything but a single-disk, non-ZIP64
/// archive of stored (uncompressed), unencrypted files with distinct names,
/// each lying inside the archive.
inline std::vector<ZipEntry> list_stored_zip_entries(const std::uint8_t* bytes, std::size_t size,
                                                     const std::string& where) {
  using detail::load_little_endian;
  if (size != 0 && bytes == nullptr) fail(where, ": list_stored_zip_entries was given null bytes");
  const std::size_t end_record = detail::find_zip_end_of_directory(bytes, size, where);
  const std::uint8_t* eocd = bytes + end_record;
  const std::uint16_t disk = load_little_endian<std::uint16_t>(eocd + 4);
  const std::uint16_t directory_disk = load_little_endian<std::uint16_t>(eocd + 6);
  const std::uint16_t entries_on_disk = load_little_endian<std::uint16_t>(eocd + 8);
  const std::uint16_t entry_count = load_little_endian<std::uint16_t>(eocd + 10);
  const std::uint32_t directory_size = load_little_endian<std::uint32_t>(eocd + 12);
  const std::uint32_t directory_offset = load_little_endian<std::uint32_t>(eocd + 16);
  if (entry_count == 0xFFFF || directory_size == 0xFFFFFFFFu || directory_offset == 0xFFFFFFFFu) {
    fail(where, ": ZIP64 archive (over 4 GiB or 65535 files) is not supported");
  }
  if (disk != 0 || directory_disk != 0 || entries_on_disk != entry_count) {
    fail(where, ": multi-disk zip archive is not supported (disk ", disk, ", directory disk ",
         directory_disk, ", ", entries_on_disk, " of ", entry_count, " entries on this disk)");
  }
  if (std::uint64_t(directory_offset) + directory_size > end_record) {
    fail(where, ": central directory [", directory_offset, ", ",
         std::uint64_t(directory_offset) + directory_size,
         ") runs past the end-of-central-directory record at byte ", end_record);
  }

  std::vector<ZipEntry> entries;
  entries.reserve(entry_count);
  std::set<std::string> names;
  const std::size_t directory_end = std::size_t(directory_offset) + directory_size;
  std::size_t at = directory_offset;
  for (std::size_t index = 0; index < entry_count; ++index) {
    if (directory_end - at < detail::kZipCentralHeaderSize) {
      fail(where, ": central directory ends inside record ", index, " of ", entry_count);
    }
    const std::uint8_t* record = bytes + at;
    if (load_little_endian<std::uint32_t>(record) != detail::kZipCentralHeaderSignature) {
      fail(where, ": central directory record ", index, " at byte ", at, " has no signature");
    }
    const std::uint16_t flags = load_little_endian<std::uint16_t>(record + 8);
    const std::uint16_t method = load_little_endian<std::uint16_t>(record + 10);
    const std::uint32_t crc = load_little_endian<std::uint32_t>(record + 16);
    const std::uint32_t compressed_size = load_little_endian<std::uint32_t>(record + 20);
    const std::uint32_t stored_size = load_little_endian<std::uint32_t>(record + 24);
    const std::size_t name_length = load_little_endian<std::uint16_t>(record + 28);
    const std::size_t extra_length = load_little_endian<std::uint16_t>(record + 30);
    const std::size_t comment_length = load_little_endian<std::uint16_t>(record + 32);
    const std::uint16_t start_disk = load_little_endian<std::uint16_t>(record + 34);
    const std::uint32_t local_offset = load_little_endian<std::uint32_t>(record + 42);
    const std::size_t record_size =
        detail::kZipCentralHeaderSize + name_length + extra_length + comment_length;
    if (directory_end - at < record_size) {
      fail(where, ": central directory record ", index, " runs past the directory's end");
    }

    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(record) + detail::kZipCentralHeaderSize,
                      name_length);
    const std::string what = where + ": entry '" + entry.name + "'";
    if (flags & 1u) fail(what, ": encrypted entries are not supported");
    if (method != 0) {
      fail(what, ": compressed (method ", method,
           "); only stored (uncompressed) entries, as torch.save writes them, are supported");
    }
    if (compressed_size == 0xFFFFFFFFu || stored_size == 0xFFFFFFFFu ||
        local_offset == 0xFFFFFFFFu || start_disk == 0xFFFF) {
      fail(what, ": ZIP64 entry (over 4 GiB) is not supported");
    }
    if (start_disk != 0) fail(what, ": starts on disk ", start_disk, " (multi-disk archive)");
    if (compressed_size != stored_size) {
      fail(what, ": a stored entry must have equal sizes, got ", compressed_size,
           " bytes stored for ", stored_size);
    }
    if (!names.insert(entry.name).second) fail(what, ": the name occurs twice");
    entry.offset = local_offset;
    entry.size = stored_size;
    detail::locate_zip_entry_data(bytes, directory_offset, method, entry, where);
    const std::uint32_t actual_crc = detail::crc32(bytes + entry.offset, entry.size);
    if (actual_crc != crc) {
      fail(what, ": CRC-32 mismatch (file corrupt): the directory says 0x", std::hex, crc,
           ", the bytes give 0x", actual_crc);
    }
    entries.push_back(std::move(entry));
    at += record_size;
  }
  if (at != directory_end) {
    fail(where, ": central directory has ", directory_end - at, " bytes after its ", entry_count,
         " records");
  }
  return entries;
}

}  // namespace xlstm::io
