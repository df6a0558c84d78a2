// The bytes of a whole file, read-only: memory-mapped where the OS allows, so
// opening a large file costs nothing until its bytes are used, else read into
// memory. The interface (FileBytes, load_file) is OS-neutral; every OS call
// is in the platform layer at the end.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/io/file_path.hpp"

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
#if !XLSTM_IO_HAVE_MMAP && defined(_WIN32)
// The smallest <windows.h>, and no min/max macros (they break std::min and
// Eigen). Only what this header defines is undefined again, so a user's own
// choice of these macros stands.
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#define XLSTM_IO_UNDEF_WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#define XLSTM_IO_UNDEF_NOMINMAX
#endif
#include <windows.h>
#ifdef XLSTM_IO_UNDEF_WIN32_LEAN_AND_MEAN
#undef WIN32_LEAN_AND_MEAN
#undef XLSTM_IO_UNDEF_WIN32_LEAN_AND_MEAN
#endif
#ifdef XLSTM_IO_UNDEF_NOMINMAX
#undef NOMINMAX
#undef XLSTM_IO_UNDEF_NOMINMAX
#endif
#define XLSTM_IO_HAVE_WIN32_MAPPING 1
#else
#define XLSTM_IO_HAVE_WIN32_MAPPING 0
#endif

namespace xlstm::io::detail {

/// The text of an errno value, for messages about failed file operations.
inline std::string errno_message(int error) { return std::generic_category().message(error); }

/// Releases a mapping made by load_file() (platform layer below).
inline void unmap_file(void* mapping, std::size_t size);

/// Tells the OS that the mapped pages wholly inside [begin, begin + size) are
/// not needed for now: they leave the process's resident memory (the file's
/// bytes stay in the page cache and are read again if touched). Where the
/// platform has no such call it does nothing (platform layer below).
inline void release_mapped_pages(const std::uint8_t* begin, std::size_t size);

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
  /// Whether the bytes are a mapping of the file (else a copy in memory).
  bool mapped() const { return mapping_ != nullptr; }
  /// Drops the resident pages of the mapped range [offset, offset + count)
  /// (release_mapped_pages); a copy in memory stays as it is.
  void release(std::size_t offset, std::size_t count) const {
    if (mapping_ != nullptr && offset < size_) {
      release_mapped_pages(data_ + offset, std::min(count, size_ - offset));
    }
  }

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
// defines unmap_file() and load_file(): mmap on POSIX, a file mapping on
// Windows; without a mapping API, load_file() reads the file through the
// standard library.
// ---------------------------------------------------------------------------

#if XLSTM_IO_HAVE_MMAP
inline void unmap_file(void* mapping, std::size_t size) { ::munmap(mapping, size); }

inline void release_mapped_pages(const std::uint8_t* begin, std::size_t size) {
  const auto page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
  if (page == 0 || size == 0) return;
  const std::uintptr_t first = (std::uintptr_t(begin) + page - 1) / page * page;
  const std::uintptr_t last = (std::uintptr_t(begin) + size) / page * page;
  // A private read-only mapping: MADV_DONTNEED drops the pages, and a later
  // read faults them in from the file again. Advice only: errors are ignored.
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

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
#elif XLSTM_IO_HAVE_WIN32_MAPPING
inline void unmap_file(void* mapping, std::size_t /*size*/) { ::UnmapViewOfFile(mapping); }

inline void release_mapped_pages(const std::uint8_t* begin, std::size_t size) {
  // VirtualUnlock on pages that are not locked takes them out of the working
  // set (and reports ERROR_NOT_LOCKED, which is expected): the documented way
  // to trim a range of a mapped view.
  if (size != 0) ::VirtualUnlock(const_cast<std::uint8_t*>(begin), size);
}

/// The system's text for a GetLastError() value, in UTF-8, with its number.
inline std::string windows_error_message(DWORD error) {
  wchar_t* text = nullptr;
  const DWORD length = ::FormatMessageW(
      FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
      nullptr, error, 0, reinterpret_cast<LPWSTR>(&text), 0, nullptr);
  std::string message;
  if (length > 0 && text != nullptr) {
    // FormatMessageW, not ...A: the A text is in the ANSI code page.
    const int bytes = ::WideCharToMultiByte(CP_UTF8, 0, text, static_cast<int>(length), nullptr, 0,
                                            nullptr, nullptr);
    if (bytes > 0) {
      message.resize(static_cast<std::size_t>(bytes));
      ::WideCharToMultiByte(CP_UTF8, 0, text, static_cast<int>(length), &message[0], bytes, nullptr,
                            nullptr);
    }
  }
  if (text != nullptr) ::LocalFree(text);
  // The system's messages end in ".\r\n".
  while (!message.empty() && (message.back() == '\n' || message.back() == '\r' ||
                              message.back() == ' ' || message.back() == '.')) {
    message.pop_back();
  }
  if (message.empty()) message = "unknown error";
  return message + " (Windows error " + std::to_string(error) + ")";
}

/// Closes a Windows handle on every exit path.
class WindowsHandle {
 public:
  explicit WindowsHandle(HANDLE handle) : handle_(handle) {}
  WindowsHandle(const WindowsHandle&) = delete;
  WindowsHandle& operator=(const WindowsHandle&) = delete;
  ~WindowsHandle() {
    if (valid()) ::CloseHandle(handle_);
  }
  HANDLE get() const { return handle_; }
  // CreateFileW fails with INVALID_HANDLE_VALUE, CreateFileMappingW with null.
  bool valid() const { return handle_ != nullptr && handle_ != INVALID_HANDLE_VALUE; }

 private:
  HANDLE handle_;
};

inline std::shared_ptr<const FileBytes> load_file(const std::string& path) {
  const std::filesystem::path native = utf8_path(path);  // wide: non-ASCII names work
  // Sharing everything matches POSIX, where another process may hold the
  // file open for writing or rename it while it is read.
  WindowsHandle file(::CreateFileW(native.c_str(), GENERIC_READ,
                                   FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                                   OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr));
  if (!file.valid()) {
    const DWORD error = ::GetLastError();
    // Opening a directory fails as "access denied", which would mislead.
    const DWORD attributes = ::GetFileAttributesW(native.c_str());
    if (attributes != INVALID_FILE_ATTRIBUTES && (attributes & FILE_ATTRIBUTE_DIRECTORY) != 0)
      fail(path, ": cannot read: it is a directory");
    fail(path, ": cannot open: ", windows_error_message(error));
  }
  if (::GetFileType(file.get()) == FILE_TYPE_DISK) {
    LARGE_INTEGER file_size{};
    if (!::GetFileSizeEx(file.get(), &file_size))
      fail(path, ": cannot get the file size: ", windows_error_message(::GetLastError()));
    // MapViewOfFile cannot map 0 bytes: an empty file is an empty buffer.
    if (file_size.QuadPart == 0)
      return std::make_shared<const FileBytes>(std::vector<std::uint8_t>());
    if (static_cast<std::uint64_t>(file_size.QuadPart) <=
        (std::numeric_limits<std::size_t>::max)()) {
      const auto size = static_cast<std::size_t>(file_size.QuadPart);
      // A read-only view never writes back. The view keeps the file mapped
      // after both handles are closed. If mapping fails (some network file
      // systems cannot), reading into memory below still works.
      WindowsHandle section(
          ::CreateFileMappingW(file.get(), nullptr, PAGE_READONLY, 0, 0, nullptr));
      if (section.valid()) {
        void* mapping = ::MapViewOfFile(section.get(), FILE_MAP_READ, 0, 0, 0);
        if (mapping != nullptr) return std::make_shared<const FileBytes>(mapping, size);
      }
    }
  }
  // Pipes, devices and unmappable files: read to the end.
  std::vector<std::uint8_t> buffer;
  std::vector<std::uint8_t> chunk(1 << 16);
  for (;;) {
    DWORD got = 0;
    if (!::ReadFile(file.get(), chunk.data(), static_cast<DWORD>(chunk.size()), &got, nullptr)) {
      const DWORD error = ::GetLastError();
      if (error == ERROR_BROKEN_PIPE) break;  // the writing end closed: the end of a pipe
      fail(path, ": cannot read: ", windows_error_message(error));
    }
    if (got == 0) break;
    buffer.insert(buffer.end(), chunk.begin(), chunk.begin() + got);
  }
  return std::make_shared<const FileBytes>(std::move(buffer));
}
#else
inline void unmap_file(void* /*mapping*/, std::size_t /*size*/) {}
inline void release_mapped_pages(const std::uint8_t* /*begin*/, std::size_t /*size*/) {}

inline std::shared_ptr<const FileBytes> load_file(const std::string& path) {
  std::ifstream in(utf8_path(path), std::ios::binary);
  if (!in) fail(path, ": cannot open for reading");
  std::vector<std::uint8_t> buffer((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, ": read error");
  return std::make_shared<const FileBytes>(std::move(buffer));
}
#endif

}  // namespace xlstm::io::detail
