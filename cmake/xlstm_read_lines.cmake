# read_lines(file out), for the check scripts run with cmake -P
# (check_citations.cmake, check_portability.cmake).
#
# Reads `file` into a list of its lines in `out`. Characters that CMake's list
# handling would misread (";", "[", "]", "\") are replaced (the callers' patterns
# never contain them), and line numbers are kept.
function(read_lines file out)
  file(READ "${file}" text)
  string(REPLACE "\\" "/" text "${text}")
  string(REPLACE ";" "," text "${text}")
  string(REPLACE "[" "(" text "${text}")
  string(REPLACE "]" ")" text "${text}")
  string(REPLACE "\n" ";" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()
