# install() of the headers and an exported package config with a version file,
# so an installed copy is found by find_package(xlstm CONFIG).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(XLSTM_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/xlstm")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/xlstm" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS xlstm EXPORT xlstmTargets)
install(EXPORT xlstmTargets NAMESPACE xlstm:: DESTINATION "${XLSTM_INSTALL_CMAKEDIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/xlstmConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/xlstmConfig.cmake"
  INSTALL_DESTINATION "${XLSTM_INSTALL_CMAKEDIR}")
# Header-only: the same package works for any architecture.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/xlstmConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/xlstmConfig.cmake" "${PROJECT_BINARY_DIR}/xlstmConfigVersion.cmake"
  DESTINATION "${XLSTM_INSTALL_CMAKEDIR}")
