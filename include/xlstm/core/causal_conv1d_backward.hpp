// The backward pass of CausalConv1d (math §1.13): with respect to the taps,
// the bias, the input and the initial window (the conv's state), for ragged
// batches. The conv's tape is its input and its initial window, which the
// caller keeps (the forward overwrites the window with the final one).
#pragma once

#include <string>

#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/layer_gradients.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {

/// dL/d(taps, bias) of a CausalConv1d (taps F x K as CausalConv1d::weight();
/// nothing listed for kernel size 0).
template <typename Scalar>
using CausalConv1dGradients = WeightBiasGradients<CausalConv1d<Scalar>, Matrix<Scalar>>;

namespace detail {
/// Room for the taps as rows (K x F) and, per batch row, its gradients of
/// the taps (K x F) and the bias, kept by the calling thread (design §7.7),
/// by capacity (the convs of a stack may differ in width). Rows: the stored
/// F x K weight would be read and written with a stride of K for every row,
/// as in the forward.
template <typename Scalar>
struct CausalConvBackwardScratch {
  Vector<Scalar> taps, partial;
};
}  // namespace detail

/// The backward pass of `conv` (math §1.13) for the forward
/// `conv.forward(x, lengths, state, y)` that started from `initial_state`:
///  - `grad_y`: dL/dy, B x T x F (ignored past a row's length);
///  - `grad_state`: in, dL/d(final window); out, dL/d(initial window);
///  - `grads`: dL/d(taps, bias) is added to it;
///  - `grad_x`: dL/dx, written (resized) or, with InputGradient::add, added
///    (then it must have x's shape); zero (or untouched) past a row's length.
/// Kernel size 0 is the identity: grad_x (+)= grad_y. Allocates nothing once
/// grad_x and the calling thread's taps buffers have their sizes.
template <typename Scalar>
void backward(const CausalConv1d<Scalar>& conv, const Sequence<Scalar>& x, const Lengths& lengths,
              const CausalConv1dState<Scalar>& initial_state, const Sequence<Scalar>& grad_y,
              CausalConv1dState<Scalar>& grad_state, CausalConv1dGradients<Scalar>& grads,
              Sequence<Scalar>& grad_x, InputGradient mode = InputGradient::replace) {
  const char* where = "backward (CausalConv1d)";
  const Index batch = x.batch(), time = x.time(), k = conv.kernel_size();
  check_equal(x.features(), conv.features(), where, "x.features()");
  check_lengths(lengths, batch, time, where);
  check(grad_y.batch() == batch && grad_y.time() == time && grad_y.features() == conv.features(),
        where, ": argument 'grad_y' must be ", batch, " x ", time, " x ", conv.features(),
        " (the forward's output), got ", grad_y.batch(), " x ", grad_y.time(), " x ",
        grad_y.features());
  conv.check_state(initial_state, batch, where);
  conv.check_state(grad_state, batch, where);
  check(grads.weight().rows() == conv.weight().rows() &&
            grads.weight().cols() == conv.weight().cols() &&
            grads.bias().size() == conv.bias().size(),
        where, ": argument 'grads' must have the conv's shapes (taps ", conv.weight().rows(), " x ",
        conv.weight().cols(), "), got ", grads.weight().rows(), " x ", grads.weight().cols());
  const bool add = mode == InputGradient::add;
  if (add) {
    check(grad_x.batch() == batch && grad_x.time() == time && grad_x.features() == x.features(),
          where, ": argument 'grad_x' must have the input's shape to be added to");
  } else {
    grad_x.resize(batch, time, x.features());
    grad_x.matrix().setZero();
  }
  const Index f = conv.features();
  if (k == 0) {
    for (Index b = 0; b < batch; ++b) {
      const Index len = length_of(lengths, b, time);
      grad_x.rows_of(b).topRows(len) += grad_y.rows_of(b).topRows(len);
    }
    return;
  }
  // Batch rows over the threads; each sums its taps' and bias's gradients
  // into a slot of its own, added in row order afterwards (the same sums at
  // every thread count).
  detail::ThreadBuffers<detail::CausalConvBackwardScratch<Scalar>> buffers;
  detail::CausalConvBackwardScratch<Scalar>& ws = buffers.get();
  const Index slot = (k + 1) * f;  // a row's K x F taps gradient, then its bias gradient
  if (ws.taps.size() < k * f) ws.taps.resize(k * f);
  if (ws.partial.size() < batch * slot) ws.partial.resize(batch * slot);
  Eigen::Map<Matrix<Scalar>> taps(ws.taps.data(), k, f);
  taps = conv.weight().transpose();
  const bool parallel = batch > 1 && double(batch) * double(time) * double(k * f) >= 1 << 16;
  parallel_for(batch, parallel, [&](Index b) {
    const Index len = length_of(lengths, b, time);
    Eigen::Map<Matrix<Scalar>> d_taps(ws.partial.data() + b * slot, k, f);
    auto d_bias = ws.partial.segment(b * slot + k * f, f);
    d_taps.setZero();
    d_bias.setZero();
    auto dx = grad_x.rows_of(b);
    const auto in = x.rows_of(b);
    const auto window = initial_state.window.middleRows(b * k, k);
    // The final window is the last k inputs of [initial window | x[0, len)]:
    // its cotangent goes to those inputs, and what stays of the initial
    // window moves down by len rows (math §1.13).
    auto d_window = grad_state.window.middleRows(b * k, k);
    if (len >= k) {
      dx.middleRows(len - k, k) += d_window;
      d_window.setZero();
    } else {
      dx.topRows(len) += d_window.bottomRows(len);
      for (Index j = k - 1; j >= len; --j) d_window.row(j) = d_window.row(j - len);
      d_window.topRows(len).setZero();
    }
    for (Index t = 0; t < len; ++t) {
      const auto gy = grad_y.rows_of(b).row(t).array();
      d_bias.array() += gy.transpose();
      for (Index j = 0; j < k; ++j) {
        const Index src = t - (k - 1 - j);  // tap j looks back k-1-j steps
        const auto tap = taps.row(j).array();
        if (src >= 0) {
          dx.row(src).array() += tap * gy;
          d_taps.row(j).array() += gy * in.row(src).array();
        } else {
          d_window.row(k + src).array() += tap * gy;
          d_taps.row(j).array() += gy * window.row(k + src).array();
        }
      }
    }
  });
  for (Index b = 0; b < batch; ++b) {
    grads.weight() +=
        Eigen::Map<const Matrix<Scalar>>(ws.partial.data() + b * slot, k, f).transpose();
    grads.bias() += ws.partial.segment(b * slot + k * f, f);
  }
}

}  // namespace xlstm
