#include <gtest/gtest.h>

#include "xlstm/core/tensor.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_sequence {

namespace {

TEST(Sequence, RowOfBatchAndTimeIsBTimesTPlusT) {
  xlstm::Sequence<float> s(2, 3, 4);
  for (xlstm::Index r = 0; r < 6; ++r) s.matrix().row(r).setConstant(static_cast<float>(r));
  EXPECT_EQ(s.batch(), 2);
  EXPECT_EQ(s.time(), 3);
  EXPECT_EQ(s.features(), 4);
  EXPECT_EQ(s(1, 2, 3), 5.0f);
  EXPECT_EQ(s.at(1, 0)(0), 3.0f);
  EXPECT_EQ(s.rows_of(1)(2, 0), 5.0f);
}

TEST(Sequence, ZerosIsZeroAndNegativeSizesThrow) {
  auto z = xlstm::Sequence<double>::zeros(2, 2, 2);
  EXPECT_EQ(z.matrix().cwiseAbs().sum(), 0.0);
  EXPECT_THROW(xlstm::Sequence<float>(-1, 2, 2), xlstm::Error);
}

}  // namespace

}  // namespace xlstm_test_sequence
