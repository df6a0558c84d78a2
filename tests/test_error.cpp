#include <gtest/gtest.h>

#include "xlstm/core/error.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_error {

namespace {

std::string message_of(void (*fn)()) {
  try {
    fn();
  } catch (const xlstm::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Error, IsARuntimeError) {
  EXPECT_THROW(xlstm::fail("x"), std::runtime_error);
}

TEST(Error, CheckEqualNamesArgumentExpectationAndActual) {
  const std::string msg = message_of([] { xlstm::check_equal(3, 4, "MLstmCell::step", "q.cols"); });
  EXPECT_NE(msg.find("MLstmCell::step"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'q.cols'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("must be 4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("got 3"), std::string::npos) << msg;
}

TEST(Error, CheckPositiveRejectsZeroAndNegative) {
  EXPECT_THROW(xlstm::check_positive(0, "f", "num_heads"), xlstm::Error);
  EXPECT_THROW(xlstm::check_positive(-2, "f", "num_heads"), xlstm::Error);
  EXPECT_NO_THROW(xlstm::check_positive(1, "f", "num_heads"));
  const std::string msg = message_of([] { xlstm::check_positive(-2, "Config", "num_heads"); });
  EXPECT_NE(msg.find("num_heads"), std::string::npos);
  EXPECT_NE(msg.find("-2"), std::string::npos);
}

TEST(Error, CheckPassesSilentlyWhenTrue) {
  EXPECT_NO_THROW(xlstm::check(true, "never"));
  EXPECT_THROW(xlstm::check(false, "always"), xlstm::Error);
}

}  // namespace

}  // namespace xlstm_test_error
