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
#include "xlstm/core/thread_buffers.hpp"
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

/// The buffers of forecast_into for one group of series (see ForecastWorkspace).
template <typename Scalar>
struct ForecastGroupWorkspace {
  Matrix<Scalar> window;       ///< every row's window: (series x passes) x W
  Matrix<Scalar> pass_window;  ///< one pass's windows, B x W
  std::vector<ScaleStatistics<Scalar>> stats;
  TokenizeScratch<Scalar> scaler;
  Sequence<Scalar> tokens, packed, head;
  Lengths lengths;
  std::vector<Index> skipped;
  TiRexState<Scalar> state;
  PassWorkspace<Scalar> pass;
};

/// A pass that keeps a record (FirstPass) or runs without padding states:
/// every token from the zero state, in buffers of its own.
template <typename Scalar>
void pass_from_zero_state(const TiRexModel<Scalar>& model, const Sequence<Scalar>& tokens,
                          Index head_tokens, Sequence<Scalar>& head) {
  auto state = model.initial_state(tokens.batch());
  model.forward_tokens(tokens, state, head, nullptr, head_tokens);
}

/// Leading fully padded tokens that row b of `window` may skip in a pass of
/// `time` tokens whose head reads the last `head_tokens` (the padding states
/// hold k < N; every row keeps at least head_tokens tokens).
template <typename Scalar>
Index skippable_tokens(const TiRexModel<Scalar>& model, const Matrix<Scalar>& window, Index b,
                       Index time, Index head_tokens) {
  const TiRexConfig& c = model.config();
  const Index limit = std::min(c.tokens_per_window() - 1, time - head_tokens);
  return leading_padding_tokens(window, b, c.patch_size(), limit);
}

/// One pass from the padding states (math §13.10): row b starts from the
/// state after its k_b leading fully padded tokens and runs only its other
/// tokens (ragged, TiRexModel::forward_rows); `ws.head` becomes
/// B x head_tokens x Q*P, the head on each row's last head_tokens tokens. The
/// same numbers as running every token from the zero state. The pass is the
/// first `time` tokens of each row of `ws.tokens`, packed into `packed_time`
/// (>= every row's own tokens) positions, so that every pass of a forecast
/// has the same buffer sizes.
template <typename Scalar>
void pass_from_padding_states(const TiRexModel<Scalar>& model, Index time, Index head_tokens,
                              Index packed_time, ForecastGroupWorkspace<Scalar>& ws) {
  const Index batch = ws.tokens.batch(), stride = ws.tokens.time();
  ws.lengths.resize(std::size_t(batch));
  ws.skipped.resize(std::size_t(batch));
  for (Index b = 0; b < batch; ++b) {
    const Index k = skippable_tokens(model, ws.window, b, time, head_tokens);
    ws.skipped[std::size_t(b)] = k;
    ws.lengths[std::size_t(b)] = time - k;
  }
  ws.packed.resize(batch, packed_time, ws.tokens.features());
  ws.packed.matrix().setZero();
  const Index nb = model.num_blocks(), d = model.config().embedding_dim;
  const bool state_fits = Index(ws.state.blocks.size()) == nb && ws.state.batch() == batch &&
                          ws.state.blocks.front().cell.y.cols() == d;
  if (!state_fits) ws.state = model.initial_state(batch);
  for (Index b = 0; b < batch; ++b) {
    const Index k = ws.skipped[std::size_t(b)], length = ws.lengths[std::size_t(b)];
    ws.packed.matrix().middleRows(b * packed_time, length) =
        ws.tokens.matrix().middleRows(b * stride + k, length);
    ws.state.copy_row_from(model.padding_state(k), 0, b);  // every row: the whole state
  }
  model.forward_rows(ws.packed, ws.lengths, ws.state, ws.head, head_tokens, ws.pass);
}

/// Series a forecast runs together (forecast_into), and (series x passes)
/// rows a group runs together: a group's tokens (8 x 64 rows of a 512-deep
/// piece: 1 MiB) stay in cache.
constexpr Index kRowsPerRun = 8;

/// forecast_into for at most kRowsPerRun rows: `context` (rows of the
/// caller's batch from `row0`) into rows row0.. of `out`.
///
/// A pass never sees another pass's output (predictions are not fed back,
/// math §13.6), so with the padding states the passes of a rollout run
/// together as rows of one batch: row i * B + b is pass k0 + i of series b,
/// with its own window and statistics. Every product is row-invariant and
/// rows never interact (math §13.10): the same bits as one pass after the
/// other, and the recurrent kernel is read once per step for all of them.
/// That needs every pass of a run to predict the same number of patches; an
/// accelerated rollout with a shorter last pass runs its passes one by one.
template <typename Scalar>
void forecast_group(const TiRexModel<Scalar>& model, const ConstMatrixRef<Scalar>& context,
                    Index prediction_length, Index max_accelerated_rollout_steps, Index row0,
                    Forecast<Scalar>& out, ForecastGroupWorkspace<Scalar>& ws,
                    ForecastGroupWorkspace<Scalar>& last_run_ws, FirstPass<Scalar>* first_pass) {
  const TiRexConfig& c = model.config();
  const Index batch = context.rows(), p = c.patch_size(), nq = c.num_quantiles();
  const Index tokens_per_window = c.tokens_per_window(), w = c.train_ctx_len;
  const Index patches = (prediction_length + p - 1) / p;
  const Index most = std::min(patches, max_accelerated_rollout_steps);
  const Index passes = (patches + most - 1) / most;
  // Pass k predicts patches [k * most, k * most + n_k) with n_k = most but
  // for a shorter last pass; it sees k * most * P appended NaN values.
  auto patches_of = [&](Index k) { return std::min(most, patches - k * most); };
  const bool cached = model.has_padding_states() && first_pass == nullptr;
  const bool uniform = patches % most == 0;
  const Index per_run = cached && uniform ? std::max<Index>(1, kRowsPerRun / batch) : 1;
  // Every pass of this call runs the head on the same number of tokens, reads
  // its tokens from a buffer of the same size and packs them into the same
  // number of positions: the buffers keep their sizes from run to run (a
  // shorter last run has buffers of its own), and a second call with the same
  // shapes allocates nothing. Only the extra head tokens of a shorter last
  // pass cost anything (one head row each).
  Index packed_time = 1;
  if (cached) {
    for (Index k = 0; k < passes; ++k) {
      const Index time = tokens_per_window + patches_of(k) - 1, head_tokens = std::min(most, time);
      window_of(context, k * most * p, w, ws.pass_window);
      for (Index b = 0; b < batch; ++b) {
        packed_time = std::max(
            packed_time, time - skippable_tokens(model, ws.pass_window, b, time, head_tokens));
      }
    }
  }
  for (Index k0 = 0; k0 < passes; k0 += per_run) {
    const Index count = std::min(per_run, passes - k0), n = patches_of(k0);
    ForecastGroupWorkspace<Scalar>& run = count == per_run ? ws : last_run_ws;
    const Index time = tokens_per_window + n - 1;
    run.window.resize(count * batch, w);
    for (Index i = 0; i < count; ++i) {
      window_of(context, (k0 + i) * most * p, w, run.pass_window);
      run.window.middleRows(i * batch, batch) = run.pass_window;
    }
    // The last n tokens predict the next n patches (math §13.6); the head
    // runs on those only, except for the first pass's record (`first_pass`).
    const bool record = first_pass && k0 == 0;
    if (cached) {
      const Index head_tokens = std::min(most, time);
      tokenize_window<Scalar>(run.window, p, most - 1, Scalar(c.nan_mask_value), run.stats,
                              run.tokens, run.scaler);
      pass_from_padding_states(model, time, head_tokens, packed_time, run);
    } else {
      tokenize_window<Scalar>(run.window, p, n - 1, Scalar(c.nan_mask_value), run.stats, run.tokens,
                              run.scaler);
      pass_from_zero_state(model, run.tokens, record ? 0 : n, run.head);
    }
    const Index first_token = run.head.time() - n;
    for (Index i = 0; i < count; ++i) {
      const Index appended = (k0 + i) * most * p;
      for (Index b = 0; b < batch; ++b) {
        const Index r = i * batch + b;
        const ScaleStatistics<Scalar>& s = run.stats[std::size_t(r)];
        for (Index t = 0; t < n; ++t) {
          for (Index j = 0; j < p; ++j) {
            const Index step = appended + t * p + j;
            if (step >= prediction_length) break;
            for (Index q = 0; q < nq; ++q) {
              out.quantiles(row0 + b, step, q) =
                  unscale(run.head(r, first_token + t, q * p + j), s);
            }
          }
        }
      }
    }
    if (record) *first_pass = {run.stats, run.tokens, run.head};
  }
}

}  // namespace detail

/// The buffers of forecast_into, kept by the caller between forecasts (one
/// per thread): after a first forecast with the same batch size, context
/// length, horizon and rollout setting, a forecast allocates nothing but its
/// outputs (none with forecast_into into the same `out`). Large batches run
/// in groups of 8 series, small ones with several rollout passes at once
/// (detail::forecast_group); a smaller last group or run has buffers of its own.
template <typename Scalar>
struct ForecastWorkspace {
  detail::ForecastGroupWorkspace<Scalar> group, last_group;
  detail::ForecastGroupWorkspace<Scalar> last_run;  ///< a group's shorter last run of passes
  Matrix<Scalar> ragged;                            ///< the list-of-series forecast's batch matrix
};

/// Forecasts `prediction_length` steps of every row of `context` (B x L, NaN
/// = missing) into `out` (resized: no allocation when it has the size), with
/// the caller's `workspace` (see forecast()). The official rollout
/// (math §13.6): each pass sees the last W values of the context followed by
/// the NaN values of the steps already forecast (left-padded with NaN to W),
/// scales them, and predicts n = min(remaining patches,
/// max_accelerated_rollout_steps) patches; one pass per n patches.
/// Predictions are never fed back. With the model's padding states
/// (TiRexModel::prepare; the loaders call it) each row of a pass starts after
/// its own leading fully padded tokens and runs only its other tokens: the
/// same numbers, bit for bit, at a fraction of the cost for short contexts
/// (math §13.10); and after a first call with the same shapes nothing is
/// allocated. A row's numbers do not depend on the other rows.
///
/// A row with no value present in a pass's window is forecast with loc 0 and
/// scale 1 (what the official scaler does). Throws xlstm::Error for an empty
/// context, an infinite value, prediction_length < 1 or
/// max_accelerated_rollout_steps < 1, before writing anything. `first_pass`,
/// if given, receives the first pass's statistics, tokens and head output
/// (then the batch runs as one group, every token from the zero state).
template <typename Scalar>
void forecast_into(const TiRexModel<Scalar>& model,
                   const ConstMatrixRef<typename TiRexModel<Scalar>::Scalar>& context,
                   Index prediction_length, Forecast<Scalar>& out,
                   ForecastWorkspace<Scalar>& workspace, Index max_accelerated_rollout_steps = 1,
                   FirstPass<Scalar>* first_pass = nullptr) {
  const char* where = "tirex::forecast";
  detail::check_context(context, where);
  check(prediction_length >= 1, where, ": argument 'prediction_length' must be >= 1, got ",
        prediction_length);
  check(max_accelerated_rollout_steps >= 1, where,
        ": argument 'max_accelerated_rollout_steps' must be >= 1, got ",
        max_accelerated_rollout_steps);
  const TiRexConfig& c = model.config();
  const Index batch = context.rows();
  out.quantiles.resize(batch, prediction_length, c.num_quantiles());
  out.median.resize(batch, prediction_length);
  // Rows never interact and every product is row-invariant (math §13.10), so
  // a large batch runs in groups of detail::kRowsPerRun series: the same numbers.
  const Index group = first_pass ? batch : detail::kRowsPerRun;
  for (Index b0 = 0; b0 < batch; b0 += group) {
    const Index rows = std::min(group, batch - b0);
    auto& ws = rows == group ? workspace.group : workspace.last_group;
    detail::forecast_group(model, ConstMatrixRef<Scalar>(context.middleRows(b0, rows)),
                           prediction_length, max_accelerated_rollout_steps, b0, out, ws,
                           workspace.last_run, first_pass);
  }
  const Index median = c.median_index();
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t < prediction_length; ++t) out.median(b, t) = out.quantiles(b, t, median);
  }
}

/// forecast_into a new Forecast with this thread's workspace (kept between
/// calls, so that a forecast with the shapes of an earlier one on the same
/// thread allocates only its outputs; it holds the buffers of the largest
/// group run so far, a few MB at the released size: call forecast_into with
/// your own ForecastWorkspace to control that memory).
template <typename Scalar>
Forecast<Scalar> forecast(const TiRexModel<Scalar>& model,
                          const ConstMatrixRef<typename TiRexModel<Scalar>::Scalar>& context,
                          Index prediction_length, Index max_accelerated_rollout_steps = 1,
                          FirstPass<Scalar>* first_pass = nullptr) {
  Forecast<Scalar> out;
  // forecast()'s workspace: the thread's, kept between calls (design §7.7).
  xlstm::detail::ThreadBuffers<ForecastWorkspace<Scalar>> workspace;
  forecast_into(model, context, prediction_length, out, workspace.get(),
                max_accelerated_rollout_steps, first_pass);
  return out;
}

/// The series of different lengths as one batch, each left-padded with NaN
/// to the longest (what the official list path does, math §13.6); every row
/// is forecast exactly as if it were alone. An empty series is an Error.
template <typename Scalar>
void ragged_to_batch(const std::vector<std::vector<Scalar>>& series, Matrix<Scalar>& batch) {
  check(!series.empty(), "tirex::forecast: argument 'series' must hold at least one series");
  std::size_t longest = 0;
  for (std::size_t b = 0; b < series.size(); ++b) {
    check(!series[b].empty(), "tirex::forecast: series ", b, " of argument 'series' is empty");
    longest = std::max(longest, series[b].size());
  }
  batch.resize(Index(series.size()), Index(longest));
  batch.setConstant(std::numeric_limits<Scalar>::quiet_NaN());
  for (std::size_t b = 0; b < series.size(); ++b) {
    const Index length = Index(series[b].size());
    batch.row(Index(b)).tail(length) =
        Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(series[b].data(), length);
  }
}

template <typename Scalar>
Matrix<Scalar> ragged_to_batch(const std::vector<std::vector<Scalar>>& series) {
  Matrix<Scalar> batch;
  ragged_to_batch(series, batch);
  return batch;
}

/// forecast_into of a list of series of different lengths (NaN = missing).
template <typename Scalar>
void forecast_into(const TiRexModel<Scalar>& model, const std::vector<std::vector<Scalar>>& series,
                   Index prediction_length, Forecast<Scalar>& out,
                   ForecastWorkspace<Scalar>& workspace, Index max_accelerated_rollout_steps = 1,
                   FirstPass<Scalar>* first_pass = nullptr) {
  ragged_to_batch(series, workspace.ragged);
  forecast_into(model, ConstMatrixRef<Scalar>(workspace.ragged), prediction_length, out, workspace,
                max_accelerated_rollout_steps, first_pass);
}

/// forecast() of a list of series of different lengths (NaN = missing).
template <typename Scalar>
Forecast<Scalar> forecast(const TiRexModel<Scalar>& model,
                          const std::vector<std::vector<Scalar>>& series, Index prediction_length,
                          Index max_accelerated_rollout_steps = 1,
                          FirstPass<Scalar>* first_pass = nullptr) {
  Forecast<Scalar> out;
  // forecast()'s workspace: the thread's, kept between calls (design §7.7).
  xlstm::detail::ThreadBuffers<ForecastWorkspace<Scalar>> workspace;
  forecast_into(model, series, prediction_length, out, workspace.get(),
                max_accelerated_rollout_steps, first_pass);
  return out;
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
