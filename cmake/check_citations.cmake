# Checks the section citations in the sources against the documents in the
# repository. Run as a script:
#
#   cmake -DSOURCE_DIR=<repository root> -P cmake/check_citations.cmake
#
# Scanned: include/, tests/ (*.cpp, *.hpp), examples/, benchmarks/, README.md,
# and the cited documents themselves (docs/*.md, tests/data/golden/README.md).
#
# A citation is a prefix followed by section numbers, e.g. "math §4.2",
# "math §4.2-§4.4", "math §6.2, §6.3" (every number of such a list is checked):
#
#   math §N.M            a heading of docs/math.md
#   design §N            a heading of docs/design.md
#   golden README §N.M   a heading of tests/data/golden/README.md
#                        (also written "tests/data/golden/README.md §N.M")
#
# A heading is a Markdown line of #'s followed by the number, e.g. "## 4 mLSTM
# cell" or "### 4.2 Parallel form". A bare "§N.M" without a prefix (a list
# continued on the next line, "(and §2.7)") is taken as a math citation in the
# sources, and as a reference to the file's own sections inside the cited
# documents.
#
# The check fails (listing file, line and section) if a cited section has no
# heading, or if a citation of a document that is not in the repository
# remains: "SPEC §..." / "SPEC.md" (now docs/math.md), "FORMAT.md" (now
# tests/data/golden/README.md) or "DESIGN.md" (now docs/design.md).

cmake_minimum_required(VERSION 3.16)

if(NOT DEFINED SOURCE_DIR)
  message(FATAL_ERROR "check_citations: pass -DSOURCE_DIR=<repository root>")
endif()
get_filename_component(SOURCE_DIR "${SOURCE_DIR}" ABSOLUTE)

set(MATH_DOC "docs/math.md")
set(DESIGN_DOC "docs/design.md")
set(GOLDEN_DOC "tests/data/golden/README.md")
set(CITED_DOCS "${MATH_DOC}" "${DESIGN_DOC}" "docs/config.md" "${GOLDEN_DOC}")

# Section numbers: "4", "4.2", "10.14".
set(NUMBER "[0-9]+(\\.[0-9]+)*")
set(PREFIX "math|docs/math\\.md|design|docs/design\\.md|golden README|tests/data/golden/README\\.md|SPEC|FORMAT\\.md|DESIGN\\.md")
# Between two numbers of one list: ", ", "-", "–", "/", " and ", " or ", " to ".
set(SEPARATOR " ?(,|-|–|/|and|or|to) ?")
set(CITATION "((${PREFIX}) )?§${NUMBER}(${SEPARATOR}§${NUMBER})*")
set(STALE "SPEC §|SPEC\\.md|FORMAT\\.md|DESIGN\\.md")

include("${CMAKE_CURRENT_LIST_DIR}/xlstm_read_lines.cmake")

# The section numbers that have a heading in `doc` (relative to SOURCE_DIR),
# in HEADINGS_<key> of the caller; empty (and MISSING_<key> set) if the file
# does not exist.
function(load_headings doc key)
  set(numbers "")
  set(missing FALSE)
  if(EXISTS "${SOURCE_DIR}/${doc}")
    read_lines("${SOURCE_DIR}/${doc}" lines)
    foreach(line IN LISTS lines)
      if(line MATCHES "^#+ +(${NUMBER})\\.?( |\t|$)")
        list(APPEND numbers "${CMAKE_MATCH_1}")
      endif()
    endforeach()
  else()
    set(missing TRUE)
  endif()
  set(HEADINGS_${key} "${numbers}" PARENT_SCOPE)
  set(MISSING_${key} "${missing}" PARENT_SCOPE)
endfunction()

load_headings("${MATH_DOC}" math)
load_headings("${DESIGN_DOC}" design)
load_headings("${GOLDEN_DOC}" golden)
if(MISSING_math)
  message(FATAL_ERROR "check_citations: ${SOURCE_DIR}/${MATH_DOC} does not exist")
endif()

# The files to scan.
set(files "")
foreach(pattern IN ITEMS
        "include/*.hpp" "include/*.h" "include/*.cpp"
        "tests/*.cpp" "tests/*.hpp"
        "examples/*.cpp" "examples/*.hpp" "examples/*.h" "examples/*.md" "examples/*.py"
        "examples/*.txt"
        "benchmarks/*.cpp" "benchmarks/*.hpp" "benchmarks/*.h" "benchmarks/*.md"
        "benchmarks/*.py" "benchmarks/*.txt")
  file(GLOB_RECURSE found RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/${pattern}")
  list(APPEND files ${found})
endforeach()
file(GLOB docs_md RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/docs/*.md")
list(APPEND files "README.md" ${docs_md} "${GOLDEN_DOC}")
list(REMOVE_DUPLICATES files)
list(SORT files)

set(errors "")
set(count_math 0)
set(count_design 0)
set(count_golden 0)
set(count_own 0)
set(scanned 0)

foreach(file IN LISTS files)
  if(NOT EXISTS "${SOURCE_DIR}/${file}")
    continue()
  endif()
  math(EXPR scanned "${scanned} + 1")
  file(READ "${SOURCE_DIR}/${file}" whole)
  if(NOT whole MATCHES "§|${STALE}")
    continue()
  endif()
  # Inside a cited document, bare numbers refer to its own sections.
  set(own_key "")
  if(file IN_LIST CITED_DOCS)
    string(MAKE_C_IDENTIFIER "${file}" own_key)
    if(NOT DEFINED HEADINGS_${own_key})
      load_headings("${file}" ${own_key})
    endif()
  endif()
  read_lines("${SOURCE_DIR}/${file}" lines)
  set(line_number 0)
  foreach(line IN LISTS lines)
    math(EXPR line_number "${line_number} + 1")
    if(NOT line MATCHES "§|${STALE}")
      continue()
    endif()
    if(line MATCHES "(${STALE})")
      list(APPEND errors "${file}:${line_number}: '${CMAKE_MATCH_1}' cites a document that is not in the repository")
    endif()
    string(REGEX MATCHALL "${CITATION}" citations "${line}")
    foreach(citation IN LISTS citations)
      set(prefix "")
      if(citation MATCHES "^(${PREFIX}) ")
        set(prefix "${CMAKE_MATCH_1}")
      endif()
      if(prefix MATCHES "^(SPEC|FORMAT\\.md|DESIGN\\.md)$")
        continue()  # reported above
      elseif(prefix MATCHES "math")
        set(key math)
        set(doc "${MATH_DOC}")
      elseif(prefix MATCHES "design")
        set(key design)
        set(doc "${DESIGN_DOC}")
      elseif(prefix MATCHES "golden")
        set(key golden)
        set(doc "${GOLDEN_DOC}")
      elseif(NOT own_key STREQUAL "")
        set(key ${own_key})
        set(doc "${file}")
      else()
        set(key math)
        set(doc "${MATH_DOC}")
      endif()
      string(REGEX MATCHALL "§${NUMBER}" sections "${citation}")
      foreach(section IN LISTS sections)
        string(REPLACE "§" "" number "${section}")
        if("${key}" STREQUAL "${own_key}")
          math(EXPR count_own "${count_own} + 1")
        else()
          math(EXPR count_${key} "${count_${key}} + 1")
        endif()
        if(MISSING_${key})
          list(APPEND errors "${file}:${line_number}: '${citation}': ${doc} does not exist")
        elseif(NOT number IN_LIST HEADINGS_${key})
          list(APPEND errors "${file}:${line_number}: '${citation}': ${doc} has no section ${number}")
        endif()
      endforeach()
    endforeach()
  endforeach()
endforeach()

math(EXPR total "${count_math} + ${count_design} + ${count_golden} + ${count_own}")
set(summary "${total} section citations in ${scanned} files (math: ${count_math}, design: ${count_design}, golden README: ${count_golden}, documents' own sections: ${count_own})")
if(errors)
  list(LENGTH errors error_count)
  list(JOIN errors "\n  " listing)
  message(FATAL_ERROR "check_citations: ${error_count} problem(s):\n  ${listing}\nChecked ${summary}.")
endif()
message(STATUS "check_citations: checked ${summary}: all resolve.")
