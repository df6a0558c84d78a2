# Checks that the library's headers use only what every supported compiler
# accepts (GCC, Clang with libstdc++ or libc++, MinGW, MSVC). Run as a script:
#
#   cmake -DSOURCE_DIR=<repository root> -P cmake/check_portability.cmake
#
# -Wpedantic (an error in the project's own targets, with g++ and clang++)
# already rejects statement expressions, variable-length arrays and __int128.
# What it lets through is checked here, in every header under include/:
#
#   - compiler extensions: __attribute__, __builtin_*, __declspec, inline
#     assembly, typeof, and the GCC-only headers <x86intrin.h> and <cpuid.h>;
#   - system headers of one platform: <unistd.h>, <sys/...>, <fcntl.h>,
#     <windows.h>;
#
# both are allowed only inside a preprocessor block whose condition names a
# compiler or system (__GNUC__, __clang__, _MSC_VER, __unix__, __APPLE__,
# _WIN32, or a XLSTM_IO_HAVE_* feature test derived from them), so that every
# other compiler skips them (the #else of such a block counts as guarded too:
# a coarse check, not a proof). And the instruction-set intrinsics (_mm*,
# __m128/__m256/__m512, <immintrin.h>) appear only in
# include/xlstm/core/kernels/simd.hpp, the one file a port to another compiler
# or ISA has to touch.
#
# Comments are ignored. The check fails listing file, line and what was found.

cmake_minimum_required(VERSION 3.16)

if(NOT DEFINED SOURCE_DIR)
  message(FATAL_ERROR "check_portability: pass -DSOURCE_DIR=<repository root>")
endif()
get_filename_component(SOURCE_DIR "${SOURCE_DIR}" ABSOLUTE)
include("${CMAKE_CURRENT_LIST_DIR}/xlstm_read_lines.cmake")

set(EXTENSIONS "__attribute__|__builtin_|__declspec|__asm|(^|[^A-Za-z0-9_])asm[ (]|[^A-Za-z0-9_]typeof[ (]|__typeof|<x86intrin\\.h>|<cpuid\\.h>")
set(SYSTEM_HEADERS "#[ ]*include[ ]*<(unistd\\.h|sys/|fcntl\\.h|windows\\.h)")
set(GUARD_MACROS "__GNUC__|__clang__|_MSC_VER|__unix__|__APPLE__|_WIN32|XLSTM_IO_HAVE_")
set(INTRINSICS "_mm_|_mm256_|_mm512_|__m128|__m256|__m512|<immintrin\\.h>")
set(SIMD_HEADER "include/xlstm/core/kernels/simd.hpp")

file(GLOB_RECURSE headers RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/include/*.hpp")
list(SORT headers)
if(NOT headers)
  message(FATAL_ERROR "check_portability: no headers under ${SOURCE_DIR}/include")
endif()

set(problems "")
foreach(header IN LISTS headers)
  # One list element per line; none of the patterns contains the characters
  # read_lines replaces.
  read_lines("${SOURCE_DIR}/${header}" text)

  # Guard state per open #if: 1 if its condition names a compiler or system.
  set(guards "")
  set(line_number 0)
  foreach(line IN LISTS text)
    math(EXPR line_number "${line_number} + 1")
    string(REGEX REPLACE "//.*$" "" code "${line}")
    if(code MATCHES "^[ ]*#[ ]*(if|elif)")
      if(CMAKE_MATCH_1 STREQUAL "elif")
        list(POP_BACK guards)  # an #elif replaces its branch's condition
      endif()
      if(code MATCHES "${GUARD_MACROS}")
        list(APPEND guards 1)
      else()
        list(APPEND guards 0)
      endif()
      continue()
    elseif(code MATCHES "^[ ]*#[ ]*endif")
      list(POP_BACK guards)
      continue()
    endif()
    list(FIND guards 1 guarded)
    if(guarded EQUAL -1)
      if(code MATCHES "${EXTENSIONS}")
        list(APPEND problems "${header}:${line_number}: compiler extension '${CMAKE_MATCH_0}' outside a compiler guard")
      endif()
      if(code MATCHES "${SYSTEM_HEADERS}")
        list(APPEND problems "${header}:${line_number}: system header '${CMAKE_MATCH_0}' outside a platform guard")
      endif()
    endif()
    if(NOT header STREQUAL SIMD_HEADER AND code MATCHES "${INTRINSICS}")
      list(APPEND problems "${header}:${line_number}: intrinsic '${CMAKE_MATCH_0}' outside ${SIMD_HEADER}")
    endif()
  endforeach()
  if(guards)
    list(APPEND problems "${header}: unbalanced #if/#endif")
  endif()
endforeach()

list(LENGTH headers count)
if(problems)
  list(JOIN problems "\n  " listing)
  message(FATAL_ERROR "check_portability: non-portable code in the headers:\n  ${listing}")
endif()
message(STATUS "check_portability: ${count} headers, no unguarded compiler extension, "
               "platform header or intrinsic outside ${SIMD_HEADER}")
