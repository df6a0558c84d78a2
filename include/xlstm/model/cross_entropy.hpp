// The language-model loss of the official trainers (math §6.5): mean
// cross-entropy of the logits against target tokens, skipping targets equal
// to the ignore index (-1), as torch's F.cross_entropy(ignore_index=-1), and
// its gradient with respect to the logits.
//
//   xlstm::Sequence<float> grad_logits;
//   const float loss = xlstm::cross_entropy(logits, targets, &grad_logits);
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// Number of targets that count (not equal to `ignore_index`).
inline Index counted_targets(const Tokens& targets, std::int64_t ignore_index = -1) {
  return Index((targets.array() != ignore_index).count());
}

/// Mean over the counted positions of logsumexp(logits) - logits[target];
/// `logits` is B x T x V, `targets` B x T with values in [0, V) or
/// `ignore_index`. With `grad_logits`, also writes dloss/dlogits there
/// (resized to B x T x V): (softmax - onehot) / N on counted rows, 0 on
/// ignored ones. When nothing counts, torch returns NaN (0/0); this returns
/// 0 with a zero gradient, so a batch of padding cannot poison a sum of
/// losses. Each row's log-sum-exp is formed stably around its maximum.
template <typename Scalar>
Scalar cross_entropy(const Sequence<Scalar>& logits, const Tokens& targets,
                     Sequence<Scalar>* grad_logits = nullptr, std::int64_t ignore_index = -1) {
  const Index batch = logits.batch(), time = logits.time(), vocab = logits.features();
  check(targets.rows() == batch && targets.cols() == time, "cross_entropy: 'targets' must be ",
        batch, " x ", time, " like the logits, got ", targets.rows(), " x ", targets.cols());
  check(vocab > 0, "cross_entropy: 'logits' must have at least one class, got 0");
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t < time; ++t) {
      const std::int64_t target = targets(b, t);
      check(target == ignore_index || (target >= 0 && target < vocab), "cross_entropy: 'targets'[",
            b, ", ", t, "] must be in [0, ", vocab, ") or the ignore index ", ignore_index,
            ", got ", target);
    }
  }
  const Index counted = counted_targets(targets, ignore_index);
  if (grad_logits) grad_logits->resize(batch, time, vocab);
  const Scalar inv_counted = counted > 0 ? Scalar(1) / Scalar(counted) : Scalar(0);
  double total = 0;
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t < time; ++t) {
      const auto row = logits.at(b, t);
      const std::int64_t target = targets(b, t);
      if (target == ignore_index) {
        if (grad_logits) grad_logits->at(b, t).setZero();
        continue;
      }
      const Scalar max = row.maxCoeff();
      const Scalar sum = (row.array() - max).exp().sum();
      const Scalar log_sum_exp = max + std::log(sum);
      total += double(log_sum_exp - row[Index(target)]);
      if (grad_logits) {
        auto g = grad_logits->at(b, t);
        g = ((row.array() - log_sum_exp).exp() * inv_counted).matrix();
        g[Index(target)] -= inv_counted;
      }
    }
  }
  return counted > 0 ? Scalar(total / double(counted)) : Scalar(0);
}

}  // namespace xlstm
