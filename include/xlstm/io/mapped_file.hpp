// The bytes of a whole file, read-only: memory-mapped where the OS allows, so
// opening a large file costs nothing until its bytes are used, else read into
// memory. The interface (FileBytes, load_file) is OS-neutral; every OS call
// is in the platform layer at the end.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"

// The platform layer's system headers (its code is at the end of this file).
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define XLSTM_IO_HAVE_MMAP 1
#else
#define XLSTM_IO_HAVE_MMAP 0
#endif

namespace xlstm::io::detail {

/// The text of an errno value, for messages about failed file operations.
inline std::string errno_message(int error) { return std::generic_category().message(error); }

/// Releases a mapping made by load_file() (platform layer below).
inline void unmap_file(void* mapping, std::size_t size);

/// Owns the bytes of one file: a read-only mapping or a heap buffer.
class FileBytes {
 public:
  explicit FileBytes(std::vector<std::uint8_t> buffer) : buffer_(std::move(buffer)) {
    data_ = buffer_.data();
    size_ = buffer_.size();
  }
  /// Takes ownership of a mapping of `size` bytes that load_file() made.
  FileBytes(void* mapping, std::size_t size) : mapping_(mapping) {
    data_ = static_cast<const std::uint8_t*>(mapping);
    size_ = size;
  }
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes() {
    if (mapping_ != nullptr) unmap_file(mapping_, size_);
  }

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  std::vector<std::uint8_t> buffer_;
  void* mapping_ = nullptr;  // owned mapping, or null for a heap buffer
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Maps `path` read-only or, where it cannot be mapped (pipes, empty files,
/// some file systems, platforms without mapping), reads it into memory.
/// Throws Error starting with `path` if it cannot be opened or read.
inline std::shared_ptr<const FileBytes> load_file(const std::string& path);

// ---------------------------------------------------------------------------
// Platform layer: the only OS-specific code of this header. Each platform
// defines unmap_file() and load_file(); without a mapping API, load_file()
// reads the file through the standard library.
// ---------------------------------------------------------------------------

#if XLSTM_IO_HAVE_MMAP
inline void unmap_file(void* mapping, std::size_t size) { ::munmap(mapping, size); }

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
inline void unmap_file(void* /*mapping*/, std::size_t /*size*/) {}

inline std::shared_ptr<const FileBytes> load_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open for reading");
  std::vector<std::uint8_t> buffer((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, ": read error");
  return std::make_shared<const FileBytes>(std::move(buffer));
}
#endif

}  // namespace xlstm::io::detail
