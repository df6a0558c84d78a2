# Cross-compiles for 64-bit Windows with Debian's mingw-w64 GCC, posix thread
# model (std::thread, std::mutex and OpenMP need it; the win32 model lacks
# them in GCC 12), and runs the programs under wine, so ctest works as on
# Linux. Used by the windows-cross preset; needs
#   apt-get install g++-mingw-w64-x86-64-posix wine64 googletest
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(_xlstm_mingw x86_64-w64-mingw32)
# C as well: GoogleTest's project (XLSTM_GTEST_FROM_SOURCE) enables it.
set(CMAKE_C_COMPILER ${_xlstm_mingw}-gcc-posix)
set(CMAKE_CXX_COMPILER ${_xlstm_mingw}-g++-posix)
set(CMAKE_RC_COMPILER ${_xlstm_mingw}-windres)

# Libraries and headers of the target only; packages from the host too, for
# the header-only Eigen and nlohmann_json (the same headers serve Windows).
set(CMAKE_FIND_ROOT_PATH /usr/${_xlstm_mingw})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# nlohmann_json's package puts /usr/include on the include path, where the
# host's C library headers would come before mingw's. Searched after mingw's
# own directories instead, it becomes one of the compiler's implicit include
# directories, which CMake leaves off the command line.
# -mbig-obj: Eigen-heavy test files exceed the 32768 sections of a plain COFF
# object.
set(CMAKE_CXX_FLAGS_INIT "-idirafter /usr/include -Wa,-mbig-obj")
# Static runtime (libstdc++, libgcc, winpthread, libgomp): the programs run
# under wine without the mingw DLLs on its path.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
# FindOpenMP would pick libgomp's import library (libgomp.dll.a), which -static
# does not override; name the static one.
execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libgomp.a
                OUTPUT_VARIABLE _xlstm_libgomp OUTPUT_STRIP_TRAILING_WHITESPACE)
if(IS_ABSOLUTE "${_xlstm_libgomp}" AND EXISTS "${_xlstm_libgomp}")
  set(OpenMP_gomp_LIBRARY "${_xlstm_libgomp}" CACHE FILEPATH "libgomp, linked statically")
endif()

# Debian's wine64 package installs the 64-bit loader outside the PATH.
find_program(XLSTM_WINE NAMES wine64 wine PATHS /usr/lib/wine NO_CMAKE_FIND_ROOT_PATH)
if(XLSTM_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${XLSTM_WINE})
endif()
