// ForecastStream: one series forecast again and again as new observations arrive (math §13.11),
// exactly (each forecast equals tirex::forecast of the whole series) or with the scaler frozen
// (the block states carried across calls: a new patch costs one token step); state save/restore.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/tirex/forecast.hpp"
#include "xlstm/tirex/model.hpp"
#include "xlstm/tirex/patch_tokens.hpp"
#include "xlstm/tirex/scaler.hpp"

namespace xlstm::tirex {

/// How a ForecastStream treats new observations (math §13.11).
enum class StreamMode {
  /// Every forecast equals tirex::forecast of the whole series so far, bit
  /// for bit. Never carries block states across new values: the official
  /// scaler re-scales the whole window with every new value and the window's
  /// left padding shifts, so no state of an earlier pass occurs in the new
  /// one. It keeps the last W values and runs one pass from the padding
  /// states (the window's real tokens) per forecast.
  exact,
  /// loc and scale stay those of the initial context's window; a new patch
  /// is tokenised with them and costs one token step; the block states are
  /// carried (the whole history, not a window). Not the official numbers:
  /// the deviation from a full recompute is measured in math §13.11.
  frozen_scaler,
};

/// One series, forecast as observations arrive.
///
///   xlstm::tirex::ForecastStream<float> stream(model, history, StreamMode::frozen_scaler);
///   auto f = stream.forecast(32);   // quantiles of the next 32 steps
///   stream.append(new_patch);       // exactly P new values (NaN = missing)
///   std::vector<std::uint8_t> bytes = stream.save();  // and restore(bytes) later
///
/// Holds a reference to `model`, which must outlive it (and stay unchanged).
/// append() allocates nothing; forecast() allocates its outputs (and, in the
/// exact mode, the pass's buffers). Bad input throws xlstm::Error and leaves
/// the stream unchanged. Not thread-safe; one stream per series.
template <typename Scalar>
class ForecastStream {
 public:
  using Model = TiRexModel<Scalar>;

  /// Starts from `context` (at least one value; NaN = missing, no infinity).
  ForecastStream(const Model& model, const std::vector<Scalar>& context, StreamMode mode)
      : model_(&model), mode_(mode) {
    const char* where = "ForecastStream";
    check(!context.empty(), where, ": argument 'context' must hold at least one value, got none");
    const Eigen::Map<const Matrix<Scalar>> row(context.data(), 1, Index(context.size()));
    detail::check_context(ConstMatrixRef<Scalar>(row), where);
    const TiRexConfig& c = model.config();
    const Index w = c.train_ctx_len, p = c.patch_size();
    window_of(ConstMatrixRef<Scalar>(row), 0, w, history_);
    observed_ = Index(context.size());
    token_.setZero(1, 2 * p);
    head_.setZero(1, c.num_quantiles() * p);
    if (mode_ == StreamMode::frozen_scaler) start_frozen();
  }

  StreamMode mode() const { return mode_; }
  /// Whether append() carries the block states (frozen_scaler) rather than
  /// forecast() recomputing a pass (exact).
  bool carries_state() const { return mode_ == StreamMode::frozen_scaler; }
  /// Values observed so far (the initial context and every appended patch).
  Index observed() const { return observed_; }
  /// The frozen statistics (frozen_scaler), or those of the current window.
  ScaleStatistics<Scalar> statistics() const {
    return mode_ == StreamMode::frozen_scaler ? stats_ : instance_statistics(history_.row(0));
  }

  /// Adds P new values (NaN = missing). One token step in the frozen_scaler
  /// mode; shifts the kept window in the exact mode. Allocates nothing.
  void append(const Scalar* values, Index count) {
    const Index p = model_->config().patch_size();
    check(count == p, "ForecastStream::append: argument 'values' must hold one patch of ", p,
          " values, got ", count);
    check(values != nullptr, "ForecastStream::append: argument 'values' is null");
    for (Index j = 0; j < p; ++j) {
      check(!std::isinf(values[j]), "ForecastStream::append: argument 'values' holds an infinite ",
            "value (", values[j], ") at position ", j, "; mark missing values with NaN");
    }
    const Index w = history_.cols();
    // The last W values: drop the oldest patch, add the new one at the end.
    for (Index i = 0; i + p < w; ++i) history_(0, i) = history_(0, i + p);
    for (Index j = 0; j < p; ++j) history_(0, w - p + j) = values[j];
    observed_ += p;
    if (mode_ == StreamMode::frozen_scaler) {
      tokenize_patch(values);
      model_->step_token(token_, state_, head_, workspace_);
    }
  }
  void append(const std::vector<Scalar>& values) { append(values.data(), Index(values.size())); }

  /// The forecast of the next `prediction_length` steps. exact: tirex::forecast
  /// of the series so far with `max_accelerated_rollout_steps`. frozen_scaler:
  /// the head of the last token, then one zero token per further patch (the
  /// accelerated rollout from the carried state; the argument is ignored).
  Forecast<Scalar> forecast(Index prediction_length,
                            Index max_accelerated_rollout_steps = 1) const {
    const char* where = "ForecastStream::forecast";
    check(prediction_length >= 1, where, ": argument 'prediction_length' must be >= 1, got ",
          prediction_length);
    check(max_accelerated_rollout_steps >= 1, where,
          ": argument 'max_accelerated_rollout_steps' must be >= 1, got ",
          max_accelerated_rollout_steps);
    if (mode_ == StreamMode::exact) {
      return tirex::forecast(*model_, ConstMatrixRef<Scalar>(history_), prediction_length,
                             max_accelerated_rollout_steps);
    }
    const TiRexConfig& c = model_->config();
    const Index p = c.patch_size(), nq = c.num_quantiles();
    Forecast<Scalar> out;
    out.quantiles.resize(1, prediction_length, nq);
    typename Model::State state = state_;
    Matrix<Scalar> head = head_, zero = Matrix<Scalar>::Zero(1, 2 * p);
    StepWorkspace<Scalar> workspace;
    for (Index step = 0; step < prediction_length; ++step) {
      if (step > 0 && step % p == 0) model_->step_token(zero, state, head, workspace);
      for (Index q = 0; q < nq; ++q) {
        out.quantiles(0, step, q) = unscale(head(0, q * p + step % p), stats_);
      }
    }
    out.median = out.quantiles.matrix().col(c.median_index()).transpose();
    return out;
  }

  /// The stream as bytes (mode, sizes, observed count, the kept window, and
  /// in the frozen_scaler mode the statistics, the block states and the last
  /// head output), for restore() by a stream over a model of the same shape.
  std::vector<std::uint8_t> save() const {
    std::vector<std::uint8_t> bytes;
    put(bytes, kMagic);
    put(bytes, std::uint64_t(mode_));
    for (const std::uint64_t v : shape()) put(bytes, v);
    put(bytes, std::uint64_t(observed_));
    put_matrix(bytes, history_);
    if (mode_ == StreamMode::frozen_scaler) {
      put(bytes, stats_.loc);
      put(bytes, stats_.scale);
      put_matrix(bytes, head_);
      for (const auto& block : state_.blocks) {
        for (const Matrix<Scalar>* s : {&block.cell.y, &block.cell.c, &block.cell.n, &block.cell.m})
          put_matrix(bytes, *s);
      }
    }
    return bytes;
  }

  /// Replaces this stream's series and state by those of save()'s bytes.
  /// Throws xlstm::Error, leaving the stream unchanged, for bytes of another
  /// mode or model shape, truncated or with trailing bytes.
  void restore(const std::vector<std::uint8_t>& bytes) {
    Reader in{bytes, 0};
    check(in.template get<std::uint64_t>() == kMagic,
          "ForecastStream::restore: not a saved stream (wrong magic)");
    const auto mode = in.template get<std::uint64_t>();
    check(mode == std::uint64_t(mode_), "ForecastStream::restore: the bytes hold a stream of mode ",
          mode, ", this stream has mode ", std::uint64_t(mode_));
    for (const std::uint64_t v : shape()) {
      check(in.template get<std::uint64_t>() == v, "ForecastStream::restore: the bytes come from ",
            "a model or scalar type of another shape");
    }
    const Index observed = Index(in.template get<std::uint64_t>());
    Matrix<Scalar> history = history_, head = head_;
    in.get_matrix(history);
    ScaleStatistics<Scalar> stats = stats_;
    typename Model::State state = state_;
    if (mode_ == StreamMode::frozen_scaler) {
      stats.loc = in.template get<Scalar>();
      stats.scale = in.template get<Scalar>();
      in.get_matrix(head);
      for (auto& block : state.blocks) {
        for (Matrix<Scalar>* s : {&block.cell.y, &block.cell.c, &block.cell.n, &block.cell.m})
          in.get_matrix(*s);
      }
    }
    check(in.offset == bytes.size(), "ForecastStream::restore: ", bytes.size() - in.offset,
          " trailing bytes");
    observed_ = observed;
    history_ = history;
    head_ = head;
    stats_ = stats;
    for (std::size_t i = 0; i < state.blocks.size(); ++i)
      state_.blocks[i].copy_row_from(state.blocks[i], 0, 0);
  }

 private:
  static constexpr std::uint64_t kMagic = 0x31525453584554ULL;  // "TEXSTR1"

  std::vector<std::uint64_t> shape() const {
    const TiRexConfig& c = model_->config();
    return {std::uint64_t(sizeof(Scalar)),  std::uint64_t(c.patch_size()),
            std::uint64_t(c.train_ctx_len), std::uint64_t(c.embedding_dim),
            std::uint64_t(c.num_blocks),    std::uint64_t(c.num_quantiles())};
  }

  /// The initial pass of the frozen_scaler mode: the first pass of
  /// forecast() (math §13.6) whose state is kept.
  void start_frozen() {
    const TiRexConfig& c = model_->config();
    const Index p = c.patch_size();
    std::vector<ScaleStatistics<Scalar>> stats;
    Sequence<Scalar> tokens, head;
    tokenize_window<Scalar>(history_, p, 0, Scalar(c.nan_mask_value), stats, tokens);
    stats_ = stats.front();
    Index skipped = 0;
    if (model_->has_padding_states()) {
      skipped = detail::leading_padding_tokens(history_, 0, p, c.tokens_per_window() - 1);
    }
    state_ = model_->initial_state(1);
    if (skipped > 0) state_.copy_row_from(model_->padding_state(skipped), 0, 0);
    const Index own = tokens.time() - skipped;
    Sequence<Scalar> real(1, own, 2 * p);
    real.matrix() = tokens.matrix().bottomRows(own);
    model_->forward_tokens(real, state_, head, nullptr, 1);
    head_ = head.matrix();
  }

  /// token_ = the tokens of one patch with the frozen statistics (math §13.5).
  void tokenize_patch(const Scalar* values) {
    const Index p = model_->config().patch_size();
    for (Index j = 0; j < p; ++j) {
      const Scalar v = scaled(values[j], stats_);
      const bool present = !std::isnan(v);
      token_(0, j) = present ? v : Scalar(model_->config().nan_mask_value);
      token_(0, p + j) = present ? Scalar(1) : Scalar(0);
    }
  }

  template <typename T>
  static void put(std::vector<std::uint8_t>& bytes, const T& value) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  static void put_matrix(std::vector<std::uint8_t>& bytes, const Matrix<Scalar>& m) {
    put(bytes, std::uint64_t(m.rows()));
    put(bytes, std::uint64_t(m.cols()));
    const auto* p = reinterpret_cast<const std::uint8_t*>(m.data());
    bytes.insert(bytes.end(), p, p + sizeof(Scalar) * std::size_t(m.size()));
  }

  struct Reader {
    const std::vector<std::uint8_t>& bytes;
    std::size_t offset;
    void read(void* out, std::size_t n) {
      check(bytes.size() - offset >= n, "ForecastStream::restore: the bytes end early (", n,
            " more needed at offset ", offset, " of ", bytes.size(), ")");
      std::memcpy(out, bytes.data() + offset, n);
      offset += n;
    }
    template <typename T>
    T get() {
      T value;
      read(&value, sizeof(T));
      return value;
    }
    /// Reads a matrix of the sizes `m` already has.
    void get_matrix(Matrix<Scalar>& m) {
      const auto rows = get<std::uint64_t>(), cols = get<std::uint64_t>();
      check(rows == std::uint64_t(m.rows()) && cols == std::uint64_t(m.cols()),
            "ForecastStream::restore: a tensor of ", rows, " x ", cols, ", expected ", m.rows(),
            " x ", m.cols());
      read(m.data(), sizeof(Scalar) * std::size_t(m.size()));
    }
  };

  const Model* model_;
  StreamMode mode_;
  Matrix<Scalar> history_;  ///< 1 x W: the last W values, left-padded with NaN
  Index observed_ = 0;
  // frozen_scaler only:
  ScaleStatistics<Scalar> stats_;
  typename Model::State state_;
  Matrix<Scalar> token_, head_;  ///< 1 x 2P; 1 x Q*P: the head of the last token
  StepWorkspace<Scalar> workspace_;
};

}  // namespace xlstm::tirex
