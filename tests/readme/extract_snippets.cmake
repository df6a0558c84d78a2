# Writes every ```cpp block of README.md into OUT as a function
# `snippet_<n>()` plus a table `kSnippets` of them, so that test_readme can
# compile and run the README's code (cmake -DREADME=... -DOUT=... -P this).
file(READ "${README}" text)
# CMake lists split at ';': hide the code's semicolons until the end.
string(REPLACE ";" "@SEMICOLON@" text "${text}")
string(REGEX MATCHALL "```cpp\n[^`]*```" blocks "${text}")
set(out "// Generated from README.md by tests/readme/extract_snippets.cmake; do not edit.\n")
set(table "")
set(n 0)
foreach(block IN LISTS blocks)
  math(EXPR n "${n} + 1")
  string(REGEX REPLACE "^```cpp\n" "" code "${block}")
  string(REGEX REPLACE "```$" "" code "${code}")
  # The #include lines of a snippet belong at file scope (test_readme.cpp has them).
  string(REGEX REPLACE "#include[^\n]*\n" "" code "${code}")
  string(APPEND out "static void snippet_${n}() {\n${code}}\n\n")
  string(APPEND table "    {${n}, snippet_${n}},\n")
endforeach()
if(n EQUAL 0)
  message(FATAL_ERROR "${README}: no ```cpp blocks found")
endif()
string(REPLACE "@SEMICOLON@" ";" out "${out}")
string(APPEND out "static const std::vector<std::pair<int, void (*)()>> kSnippets = {\n${table}};\n")
file(WRITE "${OUT}.tmp" "${out}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
