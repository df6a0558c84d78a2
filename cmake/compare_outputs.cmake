# cmake -DFIRST=<program> -DSECOND=<program> -P compare_outputs.cmake: runs
# both (no arguments) and fails unless both succeed and print the same.
# -DEMULATOR=<runner> (a cross build's CMAKE_CROSSCOMPILING_EMULATOR, e.g.
# wine) runs the programs through it.
foreach(which FIRST SECOND)
  execute_process(COMMAND ${EMULATOR} "${${which}}" RESULT_VARIABLE rc OUTPUT_VARIABLE out_${which})
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${${which}} failed (${rc})")
  endif()
endforeach()
if(NOT out_FIRST STREQUAL out_SECOND)
  message(FATAL_ERROR "outputs differ:\n${FIRST}:\n${out_FIRST}\n${SECOND}:\n${out_SECOND}")
endif()
message(STATUS "same output:\n${out_FIRST}")
