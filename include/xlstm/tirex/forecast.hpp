// The TiRex forecasting API (math §13.6, §13.8; NX-AI/tirex `forecast`, `_forecast_tensor`,
// `_embed_context`): quantile forecasts of any horizon from a batch matrix with NaN for missing
// values or from a list of series of different lengths, and the per-token embeddings.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/tirex/model.hpp"
#include "xlstm/tirex/patch_tokens.hpp"
#include "xlstm/tirex/scaler.hpp"

namespace xlstm::tirex {

/// The result of forecast().
template <typename Scalar>
struct Forecast {
  /// B x h x Q: quantiles(b, t, q) is quantile config().quantiles[q] of step t.
  Sequence<Scalar> quantiles;
  /// B x h: the 0.5 quantile (the official API calls it "mean"; it is the median).
  Matrix<Scalar> median;

  /// The official shape of the median: [B, h], squeezed to [B] when h = 1.
  Shape median_shape() const {
    if (median.cols() == 1) return {std::size_t(median.rows())};
    return {std::size_t(median.rows()), std::size_t(median.cols())};
  }
};

/// What the first pass of a forecast saw and produced (the golden files'
/// `pass0_*` tensors; for debugging): the scaler statistics per row, the
/// tokens (B x S x 2P) and the head output (B x S x Q*P) before rescaling.
template <typename Scalar>
struct FirstPass {
  std::vector<ScaleStatistics<Scalar>> stats;
  Sequence<Scalar> tokens, head;
};

namespace detail {

/// Throws unless `context` is a non-empty B x L matrix of finite values or NaN.
template <typename Scalar>
void check_context(const ConstMatrixRef<Scalar>& context, const char* where) {
  check(context.rows() > 0 && context.cols() > 0, where,
        ": argument 'context' must hold at least one series of at least one value, got ",
        context.rows(), " x ", context.cols());
  for (Index b = 0; b < context.rows(); ++b) {
    for (Index i = 0; i < context.cols(); ++i) {
      check(!std::isinf(context(b, i)), where, ": argument 'context' holds an infinite value (",
            context(b, i), ") at series ", b, ", position ", i, "; mark missing values with NaN");
    }
  }
}

/// The number of leading fully padded tokens of row `b` of `window` (tokens
/// whose P values are all NaN; math §13.10), at most `limit`.
template <typename Scalar>
Index leading_padding_tokens(const Matrix<Scalar>& window, Index b, Index patch, Index limit) {
  Index k = 0;
  while (k < limit && window.row(b).segment(k * patch, patch).array().isNaN().all()) ++k;
  return k;
}

/// One pass from the padding states (math §13.10): row b starts from the
/// state after its k_b leading fully padded tokens and runs only its other
/// tokens (ragged, TiRexModel::forward_rows); `head` becomes B x n x Q*P, the
/// head on each row's last n tokens. The same numbers as running every token
/// from the zero state.
template <typename Scalar>
void pass_from_padding_states(const TiRexModel<Scalar>& model, const Matrix<Scalar>& window,
                              const Sequence<Scalar>& tokens, Index n, Sequence<Scalar>& head) {
  const TiRexConfig& c = model.config();
  const Index batch = tokens.batch(), time = tokens.time(), p = c.patch_size();
  // The cache holds k < N; a row of padding only keeps at least one token.
  const Index limit = std::min(c.tokens_per_window() - 1, time - n);
  Lengths lengths(std::size_t(batch), 0);
  std::vector<Index> skipped(static_cast<std::size_t>(batch));
  Index longest = 0;
  for (Index b = 0; b < batch; ++b) {
    skipped[std::size_t(b)] = leading_padding_tokens(window, b, p, limit);
    lengths[std::size_t(b)] = time - skipped[std::size_t(b)];
    longest = std::max(longest, lengths[std::size_t(b)]);
  }
  Sequence<Scalar> packed(batch, longest, tokens.features());
  packed.matrix().setZero();
  auto state = model.initial_state(batch);
  for (Index b = 0; b < batch; ++b) {
    const Index k = skipped[std::size_t(b)], length = lengths[std::size_t(b)];
    packed.matrix().middleRows(b * longest, length) =
        tokens.matrix().middleRows(b * time + k, length);
    state.copy_row_from(model.padding_state(k), 0, b);
  }
  model.forward_rows(packed, lengths, state, head, n);
}

}  // namespace detail

/// Forecasts `prediction_length` steps of every row of `context` (B x L, NaN
/// = missing) with the official rollout (math §13.6): each pass sees the last
/// W values of the context followed by the NaN values of the steps already
/// forecast (left-padded with NaN to W), scales them, and predicts
/// n = min(remaining patches, max_accelerated_rollout_steps) patches; one pass
/// per n patches. Predictions are never fed back. With the model's padding
/// states (TiRexModel::prepare) each row of a pass starts after its own
/// leading fully padded tokens and runs only its other tokens: the same
/// numbers, bit for bit, at a fraction of the cost for short contexts
/// (math §13.10). A row's numbers do not depend on the other rows.
///
/// A row with no value present in a pass's window is forecast with loc 0 and
/// scale 1 (what the official scaler does). Throws xlstm::Error for an empty
/// context, an infinite value, prediction_length < 1 or
/// max_accelerated_rollout_steps < 1. `first_pass`, if given, receives the
/// first pass's statistics, tokens and head output.
template <typename Scalar>
Forecast<Scalar> forecast(const TiRexModel<Scalar>& model,
                          const ConstMatrixRef<typename TiRexModel<Scalar>::Scalar>& context,
                          Index prediction_length, Index max_accelerated_rollout_steps = 1,
                          FirstPass<Scalar>* first_pass = nullptr) {
  const char* where = "tirex::forecast";
  detail::check_context(context, where);
  check(prediction_length >= 1, where, ": argument 'prediction_length' must be >= 1, got ",
        prediction_length);
  check(max_accelerated_rollout_steps >= 1, where,
        ": argument 'max_accelerated_rollout_steps' must be >= 1, got ",
        max_accelerated_rollout_steps);
  const TiRexConfig& c = model.config();
  const Index batch = context.rows(), p = c.patch_size(), nq = c.num_quantiles();
  Forecast<Scalar> out;
  out.quantiles.resize(batch, prediction_length, nq);
  // Rows never interact and every product is row-invariant (math §13.10), so
  // a large batch runs in groups of kSeriesPerRun series: the same numbers,
  // with a group's tokens (8 x 64 rows of a 512-deep piece: 1 MiB) in cache.
  constexpr Index kSeriesPerRun = 8;
  if (batch > kSeriesPerRun && first_pass == nullptr) {
    out.median.resize(batch, prediction_length);
    for (Index b0 = 0; b0 < batch; b0 += kSeriesPerRun) {
      const Index rows = std::min(kSeriesPerRun, batch - b0);
      const Forecast<Scalar> part =
          forecast(model, ConstMatrixRef<Scalar>(context.middleRows(b0, rows)), prediction_length,
                   max_accelerated_rollout_steps);
      out.quantiles.matrix().middleRows(b0 * prediction_length, rows * prediction_length) =
          part.quantiles.matrix();
      out.median.middleRows(b0, rows) = part.median;
    }
    return out;
  }
  Index remaining = (prediction_length + p - 1) / p;  // patches still to predict
  Index appended = 0;  // NaN values appended to the context (= steps forecast so far)
  Matrix<Scalar> window;
  std::vector<ScaleStatistics<Scalar>> stats;
  Sequence<Scalar> tokens, head;
  while (remaining > 0) {
    const Index n = std::min(remaining, max_accelerated_rollout_steps);
    window_of(context, appended, c.train_ctx_len, window);
    tokenize_window<Scalar>(window, p, n - 1, Scalar(c.nan_mask_value), stats, tokens);
    // The last n tokens predict the next n patches (math §13.6); the head
    // runs on those only, except for the first pass's record (`first_pass`).
    const bool record = first_pass && appended == 0;
    if (!record && model.has_padding_states()) {
      detail::pass_from_padding_states(model, window, tokens, n, head);
    } else {
      auto state = model.initial_state(batch);
      model.forward_tokens(tokens, state, head, nullptr, record ? 0 : n);
    }
    const Index first_token = head.time() - n;
    for (Index b = 0; b < batch; ++b) {
      const ScaleStatistics<Scalar>& s = stats[std::size_t(b)];
      for (Index i = 0; i < n; ++i) {
        for (Index j = 0; j < p; ++j) {
          const Index step = appended + i * p + j;
          if (step >= prediction_length) break;
          for (Index q = 0; q < nq; ++q) {
            out.quantiles(b, step, q) = unscale(head(b, first_token + i, q * p + j), s);
          }
        }
      }
    }
    if (record) *first_pass = {stats, tokens, head};
    remaining -= n;
    appended += n * p;
  }
  out.median.resize(batch, prediction_length);
  const Index median = c.median_index();
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t < prediction_length; ++t) out.median(b, t) = out.quantiles(b, t, median);
  }
  return out;
}

/// The series of different lengths as one batch, each left-padded with NaN
/// to the longest (what the official list path does, math §13.6); every row
/// is forecast exactly as if it were alone. An empty series is an Error.
template <typename Scalar>
Matrix<Scalar> ragged_to_batch(const std::vector<std::vector<Scalar>>& series) {
  check(!series.empty(), "tirex::forecast: argument 'series' must hold at least one series");
  std::size_t longest = 0;
  for (std::size_t b = 0; b < series.size(); ++b) {
    check(!series[b].empty(), "tirex::forecast: series ", b, " of argument 'series' is empty");
    longest = std::max(longest, series[b].size());
  }
  Matrix<Scalar> batch(Index(series.size()), Index(longest));
  batch.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
  for (std::size_t b = 0; b < series.size(); ++b) {
    const Index length = Index(series[b].size());
    batch.row(Index(b)).tail(length) =
        Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(series[b].data(), length);
  }
  return batch;
}

/// forecast() of a list of series of different lengths (NaN = missing).
template <typename Scalar>
Forecast<Scalar> forecast(const TiRexModel<Scalar>& model,
                          const std::vector<std::vector<Scalar>>& series, Index prediction_length,
                          Index max_accelerated_rollout_steps = 1,
                          FirstPass<Scalar>* first_pass = nullptr) {
  const Matrix<Scalar> batch = ragged_to_batch(series);
  return forecast(model, ConstMatrixRef<Scalar>(batch), prediction_length,
                  max_accelerated_rollout_steps, first_pass);
}

/// The per-token embeddings of `context` (B x L, NaN = missing; math §13.8,
/// the official `_embed_context`): the context's window (as in a forecast's
/// first pass, without rollout tokens) through every block; the output of
/// every block (before the output norm) for every token but the fully padded
/// ones (the first floor(pad / P) tokens, pad = max(W - L, 0)). Returns a
/// B x K x (NB * D) sequence: feature i * D + k is block i's feature k, i.e.
/// the official [B, K, NB, D] tensor in row-major order.
template <typename Scalar>
Sequence<Scalar> embed_context(const TiRexModel<Scalar>& model,
                               const ConstMatrixRef<typename TiRexModel<Scalar>::Scalar>& context) {
  detail::check_context(context, "tirex::embed_context");
  const TiRexConfig& c = model.config();
  const Index batch = context.rows(), p = c.patch_size(), d = c.embedding_dim;
  const Index pad = std::max<Index>(c.train_ctx_len - context.cols(), 0);
  const Index dropped = pad / p;
  Matrix<Scalar> window;
  window_of(context, 0, c.train_ctx_len, window);
  std::vector<ScaleStatistics<Scalar>> stats;
  Sequence<Scalar> tokens, head;
  tokenize_window<Scalar>(window, p, 0, Scalar(c.nan_mask_value), stats, tokens);
  auto state = model.initial_state(batch);
  std::vector<Sequence<Scalar>> blocks;
  model.forward_tokens(tokens, state, head, &blocks);
  const Index kept = tokens.time() - dropped, nb = model.num_blocks();
  Sequence<Scalar> out(batch, kept, nb * d);
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t < kept; ++t) {
      for (Index i = 0; i < nb; ++i) {
        out.at(b, t).segment(i * d, d) = blocks[std::size_t(i)].at(b, dropped + t);
      }
    }
  }
  return out;
}

}  // namespace xlstm::tirex
