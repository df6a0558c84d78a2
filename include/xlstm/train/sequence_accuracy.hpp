// The accuracy of the official formal-language experiments (math §15.6):
// `SequenceAccuracy`, which is torchmetrics' multiclass accuracy with micro
// averaging and ignore_index −1 over all positions of all batches seen (the
// fraction of scored positions whose argmax logit is the target), the
// paper's scaled accuracy (acc − s_rand) / (1 − s_rand), and the same
// accuracy split into buckets of sequence length for evaluation.
//
//   xlstm::SequenceAccuracy accuracy;
//   accuracy.update(logits, batch.targets);
//   const double scaled = xlstm::scaled_accuracy(accuracy.value(), 0.5);
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// Index of the largest logit; the first one on ties and a NaN counts as
/// the largest (torch.argmax, which torchmetrics applies to the logits).
template <typename Row>
Index argmax_logit(const Row& row) {
  Index best = 0;
  for (Index v = 1; v < Index(row.size()); ++v) {
    if (std::isnan(row[best])) break;
    if (std::isnan(row[v]) || row[v] > row[best]) best = v;
  }
  return best;
}

/// Running micro accuracy over the scored positions of every batch given to
/// `update`, as the official metric accumulates until `compute`.
class SequenceAccuracy {
 public:
  explicit SequenceAccuracy(std::int64_t ignore_index = -1) : ignore_index_(ignore_index) {}

  /// Adds the positions of `targets` (B x T) that are not the ignore index;
  /// `logits` is B x T' x V with T' >= T (the logits of a trimmed batch
  /// may be compared with its untrimmed targets only where they exist, so
  /// a scored position beyond T' is an error).
  template <typename Scalar>
  void update(const Sequence<Scalar>& logits, const Tokens& targets) {
    check(logits.batch() == targets.rows(), "SequenceAccuracy::update: 'targets' must have ",
          logits.batch(), " rows like the logits, got ", targets.rows());
    for (Index b = 0; b < targets.rows(); ++b) {
      for (Index t = 0; t < targets.cols(); ++t) {
        const std::int64_t target = targets(b, t);
        if (target == ignore_index_) continue;
        check(t < logits.time(), "SequenceAccuracy::update: targets[", b, ", ", t,
              "] is scored but 'logits' has only ", logits.time(), " steps");
        check(target >= 0 && target < logits.features(), "SequenceAccuracy::update: targets[", b,
              ", ", t, "] must be in [0, ", logits.features(), ") or ", ignore_index_, ", got ",
              target);
        ++counted_;
        if (argmax_logit(logits.at(b, t)) == Index(target)) ++correct_;
      }
    }
  }

  /// correct / counted; 0 when nothing was counted (torchmetrics' safe
  /// division).
  double value() const { return counted_ > 0 ? double(correct_) / double(counted_) : 0.0; }
  std::int64_t correct() const { return correct_; }
  std::int64_t counted() const { return counted_; }
  void reset() { correct_ = counted_ = 0; }

 private:
  std::int64_t ignore_index_;
  std::int64_t correct_ = 0;
  std::int64_t counted_ = 0;
};

/// The paper's scaled accuracy (acc − chance) / (1 − chance): 0 for guessing,
/// 1 for perfect (App. B.1.1); parity's chance is 0.5.
inline double scaled_accuracy(double accuracy, double chance) {
  check(chance >= 0 && chance < 1, "scaled_accuracy: 'chance' must be in [0, 1), got ", chance);
  return (accuracy - chance) / (1 - chance);
}

/// An inclusive range of sequence lengths.
struct LengthBucket {
  Index min_length = 0;
  Index max_length = 0;
};

/// The evaluation buckets of the parity experiments: 40–64, 65–128, 129–256.
inline std::vector<LengthBucket> parity_evaluation_buckets() {
  return {{40, 64}, {65, 128}, {129, 256}};
}

/// SequenceAccuracy per bucket of the samples' sequence lengths (a row
/// whose length is in no bucket counts in none), plus the overall one.
class BucketedSequenceAccuracy {
 public:
  explicit BucketedSequenceAccuracy(std::vector<LengthBucket> buckets,
                                    std::int64_t ignore_index = -1)
      : ignore_index_(ignore_index),
        buckets_(std::move(buckets)),
        per_bucket_(buckets_.size(), SequenceAccuracy(ignore_index)),
        overall_(ignore_index) {
    for (std::size_t i = 0; i < buckets_.size(); ++i) {
      check(buckets_[i].min_length <= buckets_[i].max_length, "BucketedSequenceAccuracy: bucket ",
            i, " must have 'min_length' <= 'max_length', got ", buckets_[i].min_length, " > ",
            buckets_[i].max_length);
    }
  }

  /// Row b of the batch belongs to the bucket holding `sequence_lengths[b]`.
  template <typename Scalar>
  void update(const Sequence<Scalar>& logits, const Tokens& targets,
              const std::vector<Index>& sequence_lengths) {
    check(Index(sequence_lengths.size()) == targets.rows(),
          "BucketedSequenceAccuracy::update: 'sequence_lengths' must have one entry per row (",
          targets.rows(), "), got ", sequence_lengths.size());
    overall_.update(logits, targets);
    for (std::size_t i = 0; i < buckets_.size(); ++i) {
      Tokens in_bucket = targets;
      bool any = false;
      for (Index b = 0; b < targets.rows(); ++b) {
        const Index length = sequence_lengths[std::size_t(b)];
        const bool inside = length >= buckets_[i].min_length && length <= buckets_[i].max_length;
        if (!inside) in_bucket.row(b).setConstant(ignore_index_);
        any = any || inside;
      }
      if (any) per_bucket_[i].update(logits, in_bucket);
    }
  }

  const std::vector<LengthBucket>& buckets() const { return buckets_; }
  const SequenceAccuracy& bucket(std::size_t i) const { return per_bucket_.at(i); }
  const SequenceAccuracy& overall() const { return overall_; }
  void reset() {
    for (auto& a : per_bucket_) a.reset();
    overall_.reset();
  }

 private:
  std::int64_t ignore_index_;
  std::vector<LengthBucket> buckets_;
  std::vector<SequenceAccuracy> per_bucket_;
  SequenceAccuracy overall_;
};

}  // namespace xlstm
