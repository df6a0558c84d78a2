# Finds what the xlstm target needs. A parent project may provide the targets
# itself; then nothing is looked up here.
include(GNUInstallDirs)

if(NOT TARGET Eigen3::Eigen)
  # Unversioned on purpose: a versioned lookup rejects Eigen 5, whose package
  # version file does not accept 3.x requests. The minimum is checked below.
  find_package(Eigen3 CONFIG)
  if(NOT Eigen3_FOUND)
    message(FATAL_ERROR
      "xlstm needs Eigen 3.4 or newer and could not find it. "
      "On Debian/Ubuntu: apt-get install libeigen3-dev")
  endif()
endif()
if(DEFINED Eigen3_VERSION AND Eigen3_VERSION VERSION_LESS 3.4)
  message(FATAL_ERROR "xlstm needs Eigen 3.4 or newer, found Eigen ${Eigen3_VERSION}")
endif()

if(NOT TARGET nlohmann_json::nlohmann_json)
  find_package(nlohmann_json 3.2 CONFIG)
  if(NOT nlohmann_json_FOUND)
    message(FATAL_ERROR
      "xlstm needs nlohmann_json (JSON headers of safetensors files and configs). "
      "On Debian/Ubuntu: apt-get install nlohmann-json3-dev")
  endif()
endif()
