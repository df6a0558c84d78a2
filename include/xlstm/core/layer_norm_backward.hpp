// The backward pass of GroupedNorm: LayerNorm and MultiHeadLayerNorm, with
// any weight convention and with or without bias (math §1.12). A norm's tape
// is its input x, which the caller keeps: the statistics are recomputed from
// it (one pass over a row, cheaper than storing and reading them back).
#pragma once

#include <cmath>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/layer_gradients.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {

/// dL/d(weight, bias) of a GroupedNorm (absent ones stay empty).
template <typename Scalar>
using GroupedNormGradients = WeightBiasGradients<GroupedNorm<Scalar>, Vector<Scalar>>;

namespace detail {

/// Per block of rows, its sums of dL/dweight and dL/dbias (kept by the
/// calling thread, design §7.7).
template <typename Scalar>
struct NormBackwardScratch {
  Vector<Scalar> partial;
};

template <typename Norm, typename Grads>
void check_norm_backward(const char* where, const Norm& norm, Index x_rows, Index x_cols,
                         Index gy_rows, Index gy_cols, Index gx_rows, Index gx_cols,
                         const Grads& grads) {
  const Index f = norm.features();
  check(x_cols == f, where, ": argument 'x' (the forward's input) must have ", f, " columns, got ",
        x_cols);
  check(gy_rows == x_rows && gy_cols == f && gx_rows == x_rows && gx_cols == f, where,
        ": arguments 'grad_y' and 'grad_x' must be ", x_rows, " x ", f, ", got ", gy_rows, " x ",
        gy_cols, " and ", gx_rows, " x ", gx_cols);
  check(grads.weight().size() == norm.weight().size() && grads.bias().size() == norm.bias().size(),
        where, ": argument 'grads' must have the norm's shapes (weight ", norm.weight().size(),
        ", bias ", norm.bias().size(), "), got ", grads.weight().size(), " and ",
        grads.bias().size());
}

}  // namespace detail

/// The backward pass of `norm` (math §1.12) for y = norm(x), x and grad_y
/// N x features: adds dL/dweight and dL/dbias to `grads`, writes (or adds)
/// dL/dx to `grad_x`. Exact with eps inside the square root. Allocates nothing
/// once the calling thread's buffer has grown.
template <typename Scalar>
void backward(const GroupedNorm<Scalar>& norm, ConstMatrixArg<Scalar> x,
              ConstMatrixArg<Scalar> grad_y, GroupedNormGradients<Scalar>& grads,
              MatrixArg<Scalar> grad_x, InputGradient mode = InputGradient::replace) {
  detail::check_norm_backward("backward (LayerNorm)", norm, x.rows(), x.cols(), grad_y.rows(),
                              grad_y.cols(), grad_x.rows(), grad_x.cols(), grads);
  const Index g = norm.features() / norm.num_groups(), f = norm.features();
  const bool has_weight = norm.weight_mode() != NormWeight::none;
  const bool has_bias = norm.bias().size() > 0, add = mode == InputGradient::add;
  // Blocks of rows over the threads; each block sums its rows' parameter
  // gradients into a slot of its own (the calling thread's buffer), added in
  // block order afterwards: the same sums at every thread count.
  const Index blocks = (x.rows() + kRowsPerBlock - 1) / kRowsPerBlock;
  detail::ThreadBuffers<detail::NormBackwardScratch<Scalar>> buffers;
  Vector<Scalar>& partial = buffers.get().partial;
  if (partial.size() < blocks * 2 * f) partial.resize(blocks * 2 * f);
  // Group by group in SIMD arrays; `scale(c0)`: the factor dL/dy meets on its
  // way to xhat, 1 + w (offset), w (direct) or 1, for the group at c0.
  auto run = [&](auto scale) {
    for_row_blocks(x.rows(), 12 * f, [&](Index block, Index first, Index count) {
      auto d_weight = partial.segment(block * 2 * f, f);
      auto d_bias = partial.segment(block * 2 * f + f, f);
      d_weight.setZero();
      d_bias.setZero();
      for (Index r = first; r < first + count; ++r) {
        for (Index c0 = 0; c0 < f; c0 += g) {
          const auto in = x.row(r).segment(c0, g).transpose().array();
          const auto gy = grad_y.row(r).segment(c0, g).transpose().array();
          const Scalar mean = in.mean();
          const Scalar var = (in - mean).square().mean();
          const Scalar inv_std = Scalar(1) / std::sqrt(var + norm.eps());
          const auto xhat = (in - mean) * inv_std;
          d_weight.segment(c0, g).array() += gy * xhat;
          d_bias.segment(c0, g).array() += gy;
          // mean(s) and mean(s * xhat) of s = dL/dy * scale.
          const auto s = gy * scale(c0);
          const Scalar mean_s = s.sum() / Scalar(g);
          const Scalar mean_s_xhat = (s * xhat).sum() / Scalar(g);
          auto dx = grad_x.row(r).segment(c0, g).transpose().array();
          if (add) {
            dx += inv_std * (s - mean_s - xhat * mean_s_xhat);
          } else {
            dx = inv_std * (s - mean_s - xhat * mean_s_xhat);
          }
        }
      }
    });
  };
  switch (norm.weight_mode()) {
    case NormWeight::offset:
      run([&](Index c0) { return Scalar(1) + norm.weight().segment(c0, g).array(); });
      break;
    case NormWeight::direct:
      run([&](Index c0) { return norm.weight().segment(c0, g).array(); });
      break;
    case NormWeight::none:
      run([&](Index) { return Vector<Scalar>::Ones(g).array(); });
      break;
  }
  for (Index block = 0; block < blocks; ++block) {
    if (has_weight) grads.weight() += partial.segment(block * 2 * f, f);
    if (has_bias) grads.bias() += partial.segment(block * 2 * f + f, f);
  }
}

}  // namespace xlstm
