// The input side of a TiRex pass (math §13.5, §13.6): the fixed window of every pass
// (truncate to the last W values or left-pad with NaN) and the patch tokens with the
// is-present mask channel.
#pragma once

#include <limits>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/tirex/scaler.hpp"

namespace xlstm::tirex {

/// The `window` values one pass sees of each row of `context` followed by
/// `appended` NaN values (math §13.6): the last `window` of them, left-padded
/// with NaN when there are fewer. `out` becomes B x window.
template <typename Scalar>
void window_of(const ConstMatrixRef<Scalar>& context, Index appended, Index window,
               Matrix<Scalar>& out) {
  const Index length = context.cols(), total = length + appended;
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  out.resize(context.rows(), window);
  for (Index i = 0; i < window; ++i) {
    const Index position = total - window + i;  // in the extended context
    if (position >= 0 && position < length) {
      out.col(i) = context.col(position);
    } else {
      out.col(i).setConstant(nan);
    }
  }
}

/// The scaler's buffers of tokenize_window (instance_statistics).
template <typename Scalar>
struct TokenizeScratch {
  Vector<Scalar> values, squares;
};

/// The tokens of one pass (math §13.5): every row of `window` (B x W) scaled
/// with its own statistics (written to `stats`) and cut into N = W / P
/// patches; token t of row b is [P scaled values | P mask entries], mask 1
/// where the value is present, NaN values replaced by `nan_value`. Then
/// `extra_tokens` tokens of zeros (values and mask) for an accelerated
/// rollout. `tokens` becomes B x (N + extra_tokens) x 2P. Allocates nothing
/// once `stats`, `tokens` and `scratch` have their sizes.
template <typename Scalar>
void tokenize_window(const ConstMatrixRef<Scalar>& window, Index patch, Index extra_tokens,
                     Scalar nan_value, std::vector<ScaleStatistics<Scalar>>& stats,
                     Sequence<Scalar>& tokens, TokenizeScratch<Scalar>& scratch) {
  check(patch > 0 && window.cols() % patch == 0, "tokenize_window: the window (", window.cols(),
        " values) must be a multiple of the patch size (", patch, ")");
  check(extra_tokens >= 0, "tokenize_window: argument 'extra_tokens' must be >= 0, got ",
        extra_tokens);
  const Index batch = window.rows(), n = window.cols() / patch;
  stats.resize(std::size_t(batch));
  tokens.resize(batch, n + extra_tokens, 2 * patch);
  tokens.matrix().setZero();
  for (Index b = 0; b < batch; ++b) {
    const ScaleStatistics<Scalar> s =
        instance_statistics(window.row(b), scratch.values, scratch.squares);
    stats[std::size_t(b)] = s;
    for (Index t = 0; t < n; ++t) {
      auto token = tokens.at(b, t);
      for (Index j = 0; j < patch; ++j) {
        const Scalar v = scaled(window(b, t * patch + j), s);
        const bool present = !std::isnan(v);
        token(j) = present ? v : nan_value;
        token(patch + j) = present ? Scalar(1) : Scalar(0);
      }
    }
  }
}

/// The same with buffers of its own.
template <typename Scalar>
void tokenize_window(const ConstMatrixRef<Scalar>& window, Index patch, Index extra_tokens,
                     Scalar nan_value, std::vector<ScaleStatistics<Scalar>>& stats,
                     Sequence<Scalar>& tokens) {
  TokenizeScratch<Scalar> scratch;
  tokenize_window(window, patch, extra_tokens, nan_value, stats, tokens, scratch);
}

}  // namespace xlstm::tirex
