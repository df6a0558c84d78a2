# Script run by CTest (see CMakeLists.txt next to it).
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package test step failed (${rc}): ${ARGN}")
  endif()
endfunction()

run("${CMAKE_COMMAND}" --install "${XLSTM_BINARY_DIR}" --prefix "${prefix}")
run("${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
# xlstm::precompiled is installed and exported with XLSTM_BUILD_PRECOMPILED.
if(EXPECT_PRECOMPILED)
  run("${WORK_DIR}/build/consumer_precompiled")
elseif(EXISTS "${WORK_DIR}/build/consumer_precompiled")
  message(FATAL_ERROR "xlstm::precompiled was installed without XLSTM_BUILD_PRECOMPILED")
endif()
