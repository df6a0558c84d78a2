// CausalConv1d (math §1.5): depthwise causal convolution over time, with a
// rolling window of past inputs as its state so that `step` continues
// `forward` exactly. Kernel size 0 is the identity (sLSTM without conv).
#pragma once

#include <algorithm>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// The last K inputs per batch row, oldest first: row b*K + j. This is the
/// official step state `(B, KS, F)`; its row 0 is rolled out before use.
template <typename Scalar>
struct CausalConv1dState {
  Index kernel_size = 0;
  Matrix<Scalar> window;  ///< (B*K) x F
  /// B, kept on its own: with K = 0 (no conv) the window has no rows at all.
  Index batch_size = 0;

  CausalConv1dState() = default;
  CausalConv1dState(Index batch, Index kernel_size_, Index features)
      : kernel_size(kernel_size_), batch_size(batch) {
    check(batch >= 0 && kernel_size >= 0 && features >= 0,
          "CausalConv1dState: 'batch', 'kernel_size' and 'features' must be non-negative, got ",
          batch, ", ", kernel_size, " and ", features);
    check_size_product({batch, kernel_size, features}, "CausalConv1dState",
                       "'batch' x 'kernel_size' x 'features'");
    window.setZero(batch * kernel_size, features);
  }

  Index batch() const { return batch_size; }
  void reset() { window.setZero(); }
  void reset_row(Index b) {
    check(b >= 0 && b < batch(), "CausalConv1dState::reset_row: argument 'row' must be in [0, ",
          batch(), "), got ", b);
    window.middleRows(b * kernel_size, kernel_size).setZero();
  }
  void copy_row_from(const CausalConv1dState& other, Index src, Index dst) {
    check(other.kernel_size == kernel_size && other.window.cols() == window.cols(),
          "CausalConv1dState::copy_row_from: the windows have different sizes");
    check(src >= 0 && src < other.batch() && dst >= 0 && dst < batch(),
          "CausalConv1dState::copy_row_from: rows ", src, " -> ", dst, " out of range (",
          other.batch(), " and ", batch(), " rows)");
    window.middleRows(dst * kernel_size, kernel_size) =
        other.window.middleRows(src * kernel_size, kernel_size);
  }

  /// `conv_state.0` (B, K, F): the last K inputs per row, oldest first (the
  /// official step state); nothing when K = 0.
  XLSTM_STATE_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_tensors(Self& self, Visit& visit, const std::string& prefix) {
    if (self.kernel_size == 0) return;
    visit_parameter(
        visit, prefix, "conv_state.0",
        {std::size_t(self.batch()), std::size_t(self.kernel_size), std::size_t(self.window.cols())},
        self.window);
  }
};

template <typename Scalar_>
class CausalConv1d {
 public:
  using Scalar = Scalar_;
  using State = CausalConv1dState<Scalar>;

  CausalConv1d() = default;
  CausalConv1d(Index features, Index kernel_size) : features_(features), kernel_size_(kernel_size) {
    check_positive(features, "CausalConv1d", "features");
    check(kernel_size >= 0, "CausalConv1d: 'kernel_size' must be >= 0, got ", kernel_size);
    weight_.setZero(features, kernel_size);
    if (kernel_size > 0) bias_.setZero(features);
  }

  Index features() const { return features_; }
  Index kernel_size() const { return kernel_size_; }
  bool is_identity() const { return kernel_size_ == 0; }

  /// Taps (F x K): tap K-1 multiplies the current input, tap 0 the oldest.
  Matrix<Scalar>& weight() { return weight_; }
  const Matrix<Scalar>& weight() const { return weight_; }
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  State initial_state(Index batch) const { return State(batch, kernel_size_, features_); }

  /// y[t] = bias + sum_j W[:, j] * x[t - K + 1 + j]; inputs before t = 0 come
  /// from the state's window (zeros for a fresh state). The window is updated
  /// to the last K inputs.
  void forward(const Sequence<Scalar>& x, State& state, Sequence<Scalar>& y) const {
    forward(x, Lengths{}, state, y);
  }

  /// Ragged batch: row b uses its first lengths[b] steps; its window ends up
  /// holding its last valid inputs; outputs past the length are zero.
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
               Sequence<Scalar>& y) const {
    Matrix<Scalar> taps;
    forward(x, lengths, state, y, taps);
  }

  /// The same with `taps` as scratch (K x F, resized unless it has that
  /// size): allocates nothing once it and y have their sizes (the recording
  /// forward of a block, design §7.6).
  void forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state, Sequence<Scalar>& y,
               Matrix<Scalar>& taps) const;

  /// One step: x_t and y_t are B x F. Does not allocate.
  void step(const ConstMatrixRef<Scalar>& x_t, State& state, MatrixRef<Scalar> y_t) const;

  /// Official names `conv.weight` (F, 1, K) and `conv.bias` (F); none for K = 0.
  XLSTM_PARAMETER_VISITOR

  /// Throws unless `state` has the sizes initial_state(batch) gives it.
  void check_state(const State& state, Index batch, const char* where) const {
    // Compared by division: the sizes are not multiplied, so nothing overflows.
    const Index k = kernel_size_;
    check(state.kernel_size == k && state.window.cols() == features_ && state.batch() == batch &&
              (k == 0 ? state.window.rows() == 0
                      : state.window.rows() % k == 0 && state.window.rows() / k == batch),
          where, ": argument 'state' must hold ", batch, " x ", kernel_size_, " x ", features_,
          " (batch x kernel_size x features), got ", state.batch(), " x ", state.kernel_size, " x ",
          state.window.cols());
  }

  /// Lists the taps `weight` (F x K) and `bias` (F) under the conv's names;
  /// nothing for K = 0 (shared with CausalConv1dGradients,
  /// core/causal_conv1d_backward.hpp).
  template <typename Visit, typename Weight, typename Bias>
  static void visit_parameters_as(Visit& visit, const std::string& prefix, Weight& weight,
                                  Bias& bias) {
    if (weight.cols() == 0) return;
    const auto features = std::size_t(weight.rows());
    visit_parameter(visit, prefix, "conv.weight", {features, 1, std::size_t(weight.cols())},
                    weight);
    visit_parameter(visit, prefix, "conv.bias", {features}, bias);
  }

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameters_as(visit, prefix, self.weight_, self.bias_);
  }

  Index features_ = 0, kernel_size_ = 0;
  Matrix<Scalar> weight_;
  Vector<Scalar> bias_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void CausalConv1d<Scalar_>::forward(const Sequence<Scalar>& x, const Lengths& lengths, State& state,
                                    Sequence<Scalar>& y, Matrix<Scalar>& taps) const {
  check_equal(x.features(), features_, "CausalConv1d::forward", "x.features()");
  const Index batch = x.batch(), k = kernel_size_;
  check_lengths(lengths, batch, x.time(), "CausalConv1d::forward");
  y.resize(batch, x.time(), features_);
  if (k == 0) {
    y.matrix() = x.matrix();
    zero_padding(y, lengths);
    return;
  }
  check_state(state, batch, "CausalConv1d::forward");
  // Taps as rows (K x F): the stored F x K weight would be read with a
  // stride of K for every output row.
  if (taps.rows() != k || taps.cols() != features_) taps.resize(k, features_);
  taps = weight_.transpose();
  // Output rows are independent (each reads the input and the window as
  // they were before the call): over the threads by pieces of a row's steps
  // when there is enough work, so that one sequence (B = 1) is split too.
  constexpr Index kStepsPerTask = 64;
  const Index pieces = (x.time() + kStepsPerTask - 1) / kStepsPerTask;
  const bool parallel = double(batch) * double(x.time()) * double(k * features_) >= 1 << 16;
  parallel_for(batch * pieces, parallel, [&](Index item) {
    const Index b = item / pieces, first = (item % pieces) * kStepsPerTask;
    const Index end = std::min(x.time(), first + kStepsPerTask);
    const Index time = length_of(lengths, b, x.time());
    const auto in = x.rows_of(b);
    auto out = y.rows_of(b);
    const auto window = state.window.middleRows(b * k, k);
    // One output row at a time, all taps, so the row stays in L1.
    for (Index t = first; t < std::min(end, time); ++t) {
      auto out_t = out.row(t).array();
      out_t = bias_.transpose().array();
      for (Index j = 0; j < k; ++j) {
        const Index src = t - (k - 1 - j);  // tap j looks back k-1-j steps
        if (src >= 0) {
          out_t += taps.row(j).array() * in.row(src).array();
        } else {
          out_t += taps.row(j).array() * window.row(k + src).array();  // k + src in [1, k)
        }
      }
    }
    for (Index t = std::max(first, time); t < end; ++t) out.row(t).setZero();
  });
  // New windows, once every output has read the old ones: the last k inputs
  // of [old window | x].
  for (Index b = 0; b < batch; ++b) {
    const Index time = length_of(lengths, b, x.time());
    const auto in = x.rows_of(b).topRows(time);
    auto window = state.window.middleRows(b * k, k);
    if (time >= k) {
      window = in.bottomRows(k);
    } else {
      for (Index j = 0; j + time < k; ++j) window.row(j) = window.row(j + time);
      window.bottomRows(time) = in;
    }
  }
}

template <typename Scalar_>
void CausalConv1d<Scalar_>::step(const ConstMatrixRef<Scalar>& x_t, State& state,
                                 MatrixRef<Scalar> y_t) const {
  check(x_t.cols() == features_ && y_t.cols() == features_ && y_t.rows() == x_t.rows(),
        "CausalConv1d::step: expected B x ", features_, " input and output, got ", x_t.rows(),
        " x ", x_t.cols(), " and ", y_t.rows(), " x ", y_t.cols());
  const Index k = kernel_size_;
  if (k == 0) {
    y_t = x_t;
    return;
  }
  check_state(state, x_t.rows(), "CausalConv1d::step");
  for (Index b = 0; b < x_t.rows(); ++b) {
    auto window = state.window.middleRows(b * k, k);
    for (Index j = 0; j + 1 < k; ++j) window.row(j) = window.row(j + 1);  // roll left
    window.row(k - 1) = x_t.row(b);
    y_t.row(b) = bias_.transpose();
    for (Index j = 0; j < k; ++j) {
      y_t.row(b).array() += weight_.col(j).transpose().array() * window.row(j).array();
    }
  }
}

}  // namespace xlstm
