// Every path parameter of the library is a std::string holding UTF-8. On
// POSIX that is what the OS takes; on Windows a narrow path is read in the
// ANSI code page, so non-ASCII names would be garbled. Every file the library
// opens, renames or lists goes through these two conversions instead, which
// turn UTF-8 into the native path type (wide on Windows) and back.
#pragma once

#include <exception>
#include <filesystem>
#include <string>

#include "xlstm/core/error.hpp"

namespace xlstm::io::detail {

/// `path` (UTF-8) as a std::filesystem::path. Throws Error naming `path` if
/// it is not valid UTF-8 where the OS needs it converted.
inline std::filesystem::path utf8_path(const std::string& path) {
  try {
#if defined(__cpp_char8_t)
    // u8path is deprecated from C++20 on; a u8string constructor replaces it.
    return std::filesystem::path(std::u8string(path.begin(), path.end()));
#else
    return std::filesystem::u8path(path);
#endif
  } catch (const std::exception& error) {
    fail(path, ": not a valid UTF-8 path: ", error.what());
  }
}

/// The UTF-8 text of `path`: for the library's std::string path parameters
/// and for messages (path::string() would use the ANSI code page on Windows).
inline std::string utf8_string(const std::filesystem::path& path) {
#if defined(__cpp_char8_t)
  const std::u8string text = path.u8string();
  return std::string(text.begin(), text.end());
#else
  return path.u8string();
#endif
}

}  // namespace xlstm::io::detail
