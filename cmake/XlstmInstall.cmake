# install() of the headers and an exported package config with a version file,
# so an installed copy is found by find_package(xlstm CONFIG).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(XLSTM_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/xlstm")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/xlstm" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS xlstm EXPORT xlstmTargets)
if(XLSTM_BUILD_PRECOMPILED)
  # xlstm::precompiled: lib/libxlstm_precompiled.a, in the same export set.
  install(TARGETS xlstm_precompiled EXPORT xlstmTargets)
endif()
install(EXPORT xlstmTargets NAMESPACE xlstm:: DESTINATION "${XLSTM_INSTALL_CMAKEDIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/xlstmConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/xlstmConfig.cmake"
  INSTALL_DESTINATION "${XLSTM_INSTALL_CMAKEDIR}")
# Header-only: the same package works for any architecture; with the
# precompiled static library it is tied to this one.
if(XLSTM_BUILD_PRECOMPILED)
  set(_xlstm_arch_independent "")
else()
  set(_xlstm_arch_independent ARCH_INDEPENDENT)
endif()
write_basic_package_version_file("${PROJECT_BINARY_DIR}/xlstmConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion ${_xlstm_arch_independent})
install(FILES "${PROJECT_BINARY_DIR}/xlstmConfig.cmake" "${PROJECT_BINARY_DIR}/xlstmConfigVersion.cmake"
  DESTINATION "${XLSTM_INSTALL_CMAKEDIR}")
