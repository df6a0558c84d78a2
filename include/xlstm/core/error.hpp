// xlstm::Error and the argument checks every public function uses.
//
// A check names the argument, says what was expected and what came, so a user
// reading the message knows which call to fix without a debugger.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace xlstm {

/// The one exception type the library throws for bad input, bad files and bad
/// configurations.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {

template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

}  // namespace detail

/// Throws Error with the parts streamed into one message.
template <typename... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(detail::concat(std::forward<Parts>(parts)...));
}

/// Throws unless `condition`; the message parts are only formatted on failure.
template <typename... Parts>
void check(bool condition, Parts&&... parts) {
  if (!condition) fail(std::forward<Parts>(parts)...);
}

/// A backward pass consumes its tape (design §7.3): throws unless `recorded`
/// (a forward recorded into it and no backward has used it since).
inline void check_tape_recorded(bool recorded, const char* where) {
  check(recorded, where,
        ": argument 'tape' holds no recorded forward pass (record one with forward(..., tape); "
        "a recording serves one backward)");
}

/// `where`: argument `name` must equal `expected`, got `actual`.
template <typename A, typename B>
void check_equal(const A& actual, const B& expected, const char* where, const char* name) {
  if (!(actual == expected)) {
    fail(where, ": argument '", name, "' must be ", expected, ", got ", actual);
  }
}

/// `where`: argument `name` must be positive.
template <typename A>
void check_positive(const A& actual, const char* where, const char* name) {
  if (!(actual > 0)) fail(where, ": argument '", name, "' must be positive, got ", actual);
}

}  // namespace xlstm
