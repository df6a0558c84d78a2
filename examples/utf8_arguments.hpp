// The command line in UTF-8 on every system, for the examples' file names.
//
// The library takes every path as UTF-8 (xlstm/io/file_path.hpp). On POSIX
// systems argv is already what the user typed, but on Windows main's argv is
// in the ANSI code page, where a name such as "données/模型.safetensors" is
// lost. There the command line is read again in UTF-16 and converted.
//
//   int main(int argc, char** argv) {
//     examples::Utf8Arguments utf8(argc, argv);
//     argv = utf8.argv();  // argc is unchanged
//
// Files the examples open themselves go through examples::open_utf8 for the
// same reason (a narrow path to std::fstream is ANSI on Windows too).
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include "xlstm/io/file_path.hpp"

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#define EXAMPLES_UNDEF_WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#define EXAMPLES_UNDEF_NOMINMAX
#endif
#include <windows.h>
// After <windows.h>: CommandLineToArgvW (link shell32).
#include <shellapi.h>
#ifdef EXAMPLES_UNDEF_WIN32_LEAN_AND_MEAN
#undef WIN32_LEAN_AND_MEAN
#undef EXAMPLES_UNDEF_WIN32_LEAN_AND_MEAN
#endif
#ifdef EXAMPLES_UNDEF_NOMINMAX
#undef NOMINMAX
#undef EXAMPLES_UNDEF_NOMINMAX
#endif
#endif

namespace examples {

/// Holds the arguments as UTF-8 strings and an argv-style array into them.
class Utf8Arguments {
 public:
  Utf8Arguments(int argc, char** argv) {
#ifdef _WIN32
    int count = 0;
    wchar_t** wide = ::CommandLineToArgvW(::GetCommandLineW(), &count);
    if (wide != nullptr && count == argc) {
      for (int i = 0; i < count; ++i) strings_.push_back(to_utf8(wide[i]));
    }
    if (wide != nullptr) ::LocalFree(wide);
#endif
    // POSIX, or the wide command line did not match argc (should not happen):
    // keep argv as it is.
    if (strings_.empty()) strings_.assign(argv, argv + argc);
    for (std::string& s : strings_) pointers_.push_back(&s[0]);
    pointers_.push_back(nullptr);  // argv[argc] is a null pointer, as in main
  }
  Utf8Arguments(const Utf8Arguments&) = delete;
  Utf8Arguments& operator=(const Utf8Arguments&) = delete;

  char** argv() { return pointers_.data(); }

 private:
#ifdef _WIN32
  static std::string to_utf8(const wchar_t* text) {
    const int bytes = ::WideCharToMultiByte(CP_UTF8, 0, text, -1, nullptr, 0, nullptr, nullptr);
    if (bytes <= 1) return std::string();
    std::string out(static_cast<std::size_t>(bytes - 1), '\0');
    ::WideCharToMultiByte(CP_UTF8, 0, text, -1, &out[0], bytes, nullptr, nullptr);
    return out;
  }
#endif

  std::vector<std::string> strings_;
  std::vector<char*> pointers_;
};

/// Opens `path` (UTF-8) as a file stream: wide on Windows, as is elsewhere.
template <typename Stream>
void open_utf8(Stream& stream, const std::string& path,
               std::ios_base::openmode mode = std::ios_base::openmode{}) {
  if (mode == std::ios_base::openmode{}) {
    stream.open(xlstm::io::detail::utf8_path(path));
  } else {
    stream.open(xlstm::io::detail::utf8_path(path), mode);
  }
}

}  // namespace examples
