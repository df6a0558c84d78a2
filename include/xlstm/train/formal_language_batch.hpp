// Batches of formal-language examples with per-row lengths (math §15.5), and
// the order in which a trainer draws them. `lengths[b]` is the position of
// row b's last counted target + 1, so a causal model run ragged over the
// first lengths[b] steps produces every logit the loss and the metric read
// and nothing past them; `trim_to_longest` drops the columns no row needs.
//
//   xlstm::FormalLanguageBatches batches(data.train(), 256, xlstm::BatchOrder::sequential, 0,
//                                        xlstm::BatchWidth::longest);   // official order
//   xlstm::FormalLanguageBatch batch;
//   batches.next(batch);   // storage reused from the previous batch
//   model.forward(batch.inputs, batch.lengths, state, logits);
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/train/formal_language_dataset.hpp"
#include "xlstm/train/numpy_generator.hpp"

namespace xlstm {

/// B examples side by side: `inputs` and `targets` are B x T token ids
/// (targets −1 where nothing is scored), `lengths[b]` the steps row b needs,
/// `sequence_lengths[b]` the task's length of the sample, `indices[b]` its
/// index in the split.
struct FormalLanguageBatch {
  Tokens inputs;
  Tokens targets;
  Lengths lengths;
  std::vector<Index> sequence_lengths;
  std::vector<std::int64_t> indices;

  Index batch() const { return inputs.rows(); }
  Index time() const { return inputs.cols(); }

  /// Keeps only the first max(lengths) columns: the rest holds padding and
  /// ignored targets in every row, and a causal model's outputs before them
  /// do not depend on them.
  void trim_to_longest() {
    const Index longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
    inputs.conservativeResize(Eigen::NoChange, longest);
    targets.conservativeResize(Eigen::NoChange, longest);
  }
};

/// How many columns a batch has.
enum class BatchWidth {
  /// Every position of the examples (context_length − |shift|): the
  /// official tensors.
  context,
  /// Up to the longest row's length: what a causal model needs (the same
  /// as `trim_to_longest` on a full batch, without filling the rest first).
  longest,
};

/// The examples `indices` of `split` as one batch, rows in that order,
/// written into `batch`. `scratch` holds the examples between generating and
/// copying them; passing the same vector (and batch) again reuses their
/// storage, so a training loop does not allocate and fault in fresh memory
/// for every batch.
inline void make_formal_language_batch(const FormalLanguageSplit& split,
                                       const std::vector<std::int64_t>& indices, BatchWidth width,
                                       std::vector<FormalLanguageExample>& scratch,
                                       FormalLanguageBatch& batch) {
  check(!indices.empty(), "make_formal_language_batch: 'indices' must not be empty");
  if (scratch.size() < indices.size()) scratch.resize(indices.size());
  Index longest = 0;
  for (std::size_t b = 0; b < indices.size(); ++b) {
    split.example(indices[b], scratch[b]);
    longest = std::max(longest, scratch[b].length);
  }
  const Index rows = Index(indices.size());
  const Index time = width == BatchWidth::longest ? longest : split.example_length();
  batch.inputs.resize(rows, time);
  batch.targets.resize(rows, time);
  batch.lengths.resize(indices.size());
  batch.sequence_lengths.resize(indices.size());
  batch.indices = indices;
  for (Index b = 0; b < rows; ++b) {
    const FormalLanguageExample& example = scratch[std::size_t(b)];
    for (Index t = 0; t < time; ++t) {
      batch.inputs(b, t) = example.input[std::size_t(t)];
      batch.targets(b, t) = example.target[std::size_t(t)];
    }
    batch.lengths[std::size_t(b)] = example.length;
    batch.sequence_lengths[std::size_t(b)] = example.sequence_length;
  }
}

/// The same, returning a new batch.
inline FormalLanguageBatch make_formal_language_batch(const FormalLanguageSplit& split,
                                                      const std::vector<std::int64_t>& indices,
                                                      BatchWidth width = BatchWidth::context) {
  std::vector<FormalLanguageExample> scratch;
  FormalLanguageBatch batch;
  make_formal_language_batch(split, indices, width, scratch, batch);
  return batch;
}

/// In which order a pass over a split visits its examples.
enum class BatchOrder {
  /// 0, 1, 2, ...: the official trainer's `DataLoader(split, batch_size)`
  /// (no shuffle), so the batches are the official ones, row for row.
  sequential,
  /// A new permutation every pass, drawn from a seeded generator; not
  /// torch's DataLoader shuffle (which the official trainer does not use).
  shuffled,
};

/// Endless batches over a split: passes one after the other, each cut into
/// batches of `batch_size` with a smaller last batch when the split does not
/// divide (DataLoader's `drop_last=False`), as the official training loop
/// restarts its loader until the step budget is spent.
class FormalLanguageBatches {
 public:
  /// `split` must outlive this object.
  FormalLanguageBatches(const FormalLanguageSplit& split, Index batch_size,
                        BatchOrder order = BatchOrder::sequential, std::uint64_t shuffle_seed = 0,
                        BatchWidth width = BatchWidth::context)
      : split_(&split),
        batch_size_(batch_size),
        order_(order),
        width_(width),
        shuffler_(shuffle_seed) {
    check(batch_size >= 1, "FormalLanguageBatches: 'batch_size' must be >= 1, got ", batch_size);
    check(split.count() >= 1, "FormalLanguageBatches: split '", split.name(),
          "' must hold at least one example, got 0");
    start_pass();
  }

  /// The next batch; starts a new pass when the current one is used up.
  FormalLanguageBatch next() {
    FormalLanguageBatch batch;
    next(batch);
    return batch;
  }

  /// The same into `batch`, reusing its storage and this object's scratch.
  void next(FormalLanguageBatch& batch) {
    const std::int64_t begin = advance();
    std::vector<std::int64_t> indices;
    indices.reserve(std::size_t(position_ - begin));
    for (std::int64_t i = begin; i < position_; ++i) {
      indices.push_back(order_ == BatchOrder::sequential ? i : permutation_[std::size_t(i)]);
    }
    make_formal_language_batch(*split_, indices, width_, scratch_, batch);
  }
  /// Moves past `count` batches without generating them: afterwards `next`
  /// returns what it would have returned after `count` more calls (for
  /// resuming a run from its batches_drawn()).
  void skip(std::int64_t count) {
    check(count >= 0, "FormalLanguageBatches::skip: 'count' must be >= 0, got ", count);
    for (std::int64_t i = 0; i < count; ++i) advance();
  }
  /// Batches returned (or skipped) since construction.
  std::int64_t batches_drawn() const { return drawn_; }

  /// Passes completed before the batch `next` returns next (from 0).
  std::int64_t pass() const { return position_ >= split_->count() ? pass_ + 1 : pass_; }

 private:
  // Starts a new pass if the current one is used up, moves position_ past
  // the next batch and returns where that batch begins.
  std::int64_t advance() {
    if (position_ >= split_->count()) {
      ++pass_;
      start_pass();
    }
    const std::int64_t begin = position_;
    position_ = std::min<std::int64_t>(position_ + batch_size_, split_->count());
    ++drawn_;
    return begin;
  }
  // Fisher–Yates from the back with numpy's bounded integers: the same
  // permutation on every platform (std::shuffle's is implementation-defined).
  void start_pass() {
    position_ = 0;
    if (order_ != BatchOrder::shuffled) return;
    const std::int64_t n = split_->count();
    permutation_.resize(std::size_t(n));
    for (std::int64_t i = 0; i < n; ++i) permutation_[std::size_t(i)] = i;
    for (std::int64_t i = n - 1; i > 0; --i) {
      const std::int64_t j = shuffler_.integer(0, i + 1);
      std::swap(permutation_[std::size_t(i)], permutation_[std::size_t(j)]);
    }
  }

  const FormalLanguageSplit* split_;
  Index batch_size_;
  BatchOrder order_;
  BatchWidth width_;
  NumpyGenerator shuffler_;
  std::vector<std::int64_t> permutation_;
  std::vector<FormalLanguageExample> scratch_;
  std::int64_t position_ = 0;
  std::int64_t pass_ = 0;
  std::int64_t drawn_ = 0;
};

}  // namespace xlstm
