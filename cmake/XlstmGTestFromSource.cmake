# GoogleTest built from source with the project's compiler
# (XLSTM_GTEST_FROM_SOURCE): for a cross build, where the installed libgtest
# was built for the build machine. Debian's googletest package (installed with
# libgtest-dev) holds the sources in /usr/src/googletest.
set(XLSTM_GTEST_SOURCE_DIR "/usr/src/googletest" CACHE PATH
    "GoogleTest sources built when XLSTM_GTEST_FROM_SOURCE is on")
if(NOT EXISTS "${XLSTM_GTEST_SOURCE_DIR}/CMakeLists.txt")
  message(FATAL_ERROR
    "XLSTM_GTEST_FROM_SOURCE: no GoogleTest sources in ${XLSTM_GTEST_SOURCE_DIR}. "
    "On Debian/Ubuntu: apt-get install googletest (or set XLSTM_GTEST_SOURCE_DIR)")
endif()
# gtest and gtest_main only, never installed with xlstm. Cache entries: the
# googletest of Debian 12 requires CMake 3.5, whose option() would override
# plain variables.
set(BUILD_GMOCK OFF CACHE BOOL "Builds the googlemock subproject" FORCE)
set(INSTALL_GTEST OFF CACHE BOOL "Enable installation of googletest" FORCE)
# Defines GTest::gtest and GTest::gtest_main, which tests/CMakeLists.txt links.
add_subdirectory("${XLSTM_GTEST_SOURCE_DIR}" "${PROJECT_BINARY_DIR}/googletest" EXCLUDE_FROM_ALL)
