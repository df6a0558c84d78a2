// Library version. This is the one place it is written: CMakeLists.txt reads
// it from here for project(VERSION) and the package version file.
#pragma once

#define XLSTM_VERSION_MAJOR 0
#define XLSTM_VERSION_MINOR 1
#define XLSTM_VERSION_PATCH 0
#define XLSTM_VERSION_STRING "0.1.0"

namespace xlstm {

inline constexpr int version_major = XLSTM_VERSION_MAJOR;
inline constexpr int version_minor = XLSTM_VERSION_MINOR;
inline constexpr int version_patch = XLSTM_VERSION_PATCH;
inline constexpr const char* version_string = XLSTM_VERSION_STRING;

}  // namespace xlstm
