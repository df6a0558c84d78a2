// The backward pass of the mLSTM block (math §5.5, design §7): through the
// down-projection and the residual, the output gate SiLU(z), the learnable
// skip, the multi-head norm, the mLSTM cell (cells/mlstm_backward.hpp, in the
// form the forward ran), the i/f gates, the headwise q/k/v projections, the
// conv + SiLU, the up-projection and the pre-norm, with respect to the
// parameters, the input and the initial state (conv window and cell state),
// for ragged batches.
//
//   xlstm::MLstmBlockTape<float> tape;
//   block.forward(x, state, y, tape);                   // records
//   xlstm::MLstmBlockGradients<float> grads(block);     // zeros, named like the parameters
//   auto grad_state = block.initial_state(batch);       // cotangent of the final state
//   xlstm::Sequence<float> grad_x;
//   xlstm::backward(block, tape, grad_y, grad_state, grads, grad_x);
//   // grads += dL/dparameters; grad_state = dL/d(initial state); grad_x = dL/dx
#pragma once

#include <algorithm>
#include <string>

#include "xlstm/blocks/block_backward_checks.hpp"
#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/cells/mlstm_backward.hpp"
#include "xlstm/core/activations_backward.hpp"
#include "xlstm/core/causal_conv1d_backward.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/layer_norm_backward.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// The gradients of an MLstmBlock's parameters: one gradient object per
/// layer and the skip vector, listed under the block's names and shapes
/// (design §7.2).
template <typename Scalar_>
class MLstmBlockGradients {
 public:
  using Scalar = Scalar_;

  explicit MLstmBlockGradients(const MLstmBlock<Scalar>& block)
      : xlstm_norm_(block.xlstm_norm()),
        proj_up_(block.proj_up()),
        conv1d_(block.conv1d()),
        q_proj_(block.q_proj()),
        k_proj_(block.k_proj()),
        v_proj_(block.v_proj()),
        igate_(block.igate()),
        fgate_(block.fgate()),
        outnorm_(block.outnorm()),
        learnable_skip_(Vector<Scalar>::Zero(block.learnable_skip().size())),
        proj_down_(block.proj_down()) {}

  GroupedNormGradients<Scalar>& xlstm_norm() { return xlstm_norm_; }
  LinearGradients<Scalar>& proj_up() { return proj_up_; }
  CausalConv1dGradients<Scalar>& conv1d() { return conv1d_; }
  HeadwiseLinearGradients<Scalar>& q_proj() { return q_proj_; }
  HeadwiseLinearGradients<Scalar>& k_proj() { return k_proj_; }
  HeadwiseLinearGradients<Scalar>& v_proj() { return v_proj_; }
  LinearGradients<Scalar>& igate() { return igate_; }
  LinearGradients<Scalar>& fgate() { return fgate_; }
  GroupedNormGradients<Scalar>& outnorm() { return outnorm_; }
  Vector<Scalar>& learnable_skip() { return learnable_skip_; }
  LinearGradients<Scalar>& proj_down() { return proj_down_; }

  /// Member by member: a training step calls it, and listing the parameters
  /// would build their names (allocations; design §7.6).
  void zero() {
    for (auto* norm : {&xlstm_norm_, &outnorm_}) norm->zero();
    for (auto* linear : {&proj_up_, &igate_, &fgate_, &proj_down_}) linear->zero();
    for (auto* proj : {&q_proj_, &k_proj_, &v_proj_}) proj->zero();
    conv1d_.zero();
    learnable_skip_.setZero();
  }

  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    MLstmBlock<Scalar>::visit_parameters_as(visit, prefix, self.xlstm_norm_, self.proj_up_,
                                            self.q_proj_, self.k_proj_, self.v_proj_, self.conv1d_,
                                            self.igate_, self.fgate_, self.outnorm_,
                                            self.learnable_skip_, self.proj_down_);
  }

  GroupedNormGradients<Scalar> xlstm_norm_;
  LinearGradients<Scalar> proj_up_;
  CausalConv1dGradients<Scalar> conv1d_;
  HeadwiseLinearGradients<Scalar> q_proj_, k_proj_, v_proj_;
  LinearGradients<Scalar> igate_, fgate_;
  GroupedNormGradients<Scalar> outnorm_;
  Vector<Scalar> learnable_skip_;
  LinearGradients<Scalar> proj_down_;
};

/// The backward pass of `block` over the forward recorded in `tape`
/// (math §5.5, design §7.4):
///  - `grad_y`: dL/dy, B x T x E (ignored past a row's length);
///  - `grad_state`: in, dL/d(final state) (conv window and cell state {C, n,
///    m}; make it with initial_state(batch): zeros when the loss does not see
///    it); out, dL/d(initial state);
///  - `grads`: dL/d(parameters) is added to it;
///  - `grad_x`: out, dL/dx, B x T x E (zero past a row's length); not grad_y.
/// Consumes the tape (its storage becomes the workspace). Allocates nothing
/// once the tape's workspace and grad_x have their sizes.
template <typename Scalar>
void backward(const MLstmBlock<Scalar>& block, MLstmBlockTape<Scalar>& tape,
              const Sequence<Scalar>& grad_y, MLstmBlockState<Scalar>& grad_state,
              MLstmBlockGradients<Scalar>& grads, Sequence<Scalar>& grad_x) {
  const char* where = "backward (MLstmBlock)";
  detail::check_block_backward(where, "backward (MLstmBlock), argument 'grad_state'", block,
                               tape.recorded, tape.x, grad_y, grad_state, grad_x);
  const Index batch = tape.x.batch(), time = tape.x.time(), inner = block.inner_dim();
  check(tape.up.features() == 2 * inner, where,
        ": argument 'tape' was recorded by a block of inner width ", tape.up.features() / 2,
        ", this block has ", inner);
  detail::check_mlstm_tape(block.cell(), tape.cell);
  // The widths, heads, projection blocks, kernel size and biases, so that a
  // mismatch throws before anything is added.
  const Matrix<Scalar>& up_w = grads.proj_up().weight();
  const Matrix<Scalar>& q_w = grads.q_proj().weight();
  const Matrix<Scalar>& i_w = grads.igate().weight();
  const Index conv_taps = grads.conv1d().weight().cols();
  check(up_w.rows() == 2 * inner && up_w.cols() == block.embedding_dim() &&
            q_w.rows() == block.q_proj().weight().rows() &&
            q_w.cols() == block.q_proj().weight().cols() &&
            i_w.rows() == block.cell().num_heads() && conv_taps == block.conv1d().weight().cols() &&
            grads.proj_down().bias().size() == block.proj_down().bias().size(),
        where, ": argument 'grads' was made for another block: expected proj_up ", 2 * inner, " x ",
        block.embedding_dim(), ", q_proj ", block.q_proj().weight().rows(), " x ",
        block.q_proj().weight().cols(), ", igate ", block.cell().num_heads(), " rows, ",
        block.conv1d().weight().cols(), " conv taps, got ", up_w.rows(), " x ", up_w.cols(), ", ",
        q_w.rows(), " x ", q_w.cols(), ", ", i_w.rows(), " rows, ", conv_taps, " taps");
  tape.recorded = false;  // from here on its storage is the workspace
  // The gradients of the intermediates the tape does not hold in place: one
  // set per thread, shared by the blocks of a stack (their backwards run one
  // after another), not one per tape (design §7.7).
  detail::ThreadBuffers<detail::MLstmBlockBackwardScratch<Scalar>> buffers;
  detail::MLstmBlockBackwardScratch<Scalar>& ws = buffers.get();

  // y = x + proj_down(gated): grad_x starts as dL/dy (zero past the lengths,
  // where the output is zero whatever the input). dL/dgated replaces gated.
  grad_x = grad_y;
  zero_padding(grad_x, tape.lengths);
  auto& d_gated = tape.gated.matrix();
  backward_valid_rows(block.proj_down(), tape.gated.matrix(), grad_x.matrix(), grads.proj_down(),
                      d_gated, time, tape.lengths, tape.packed_down);

  // gated = (h_norm + skip * conv_act) * silu(z), row by row (math §5.5):
  // dL/dz into d_up's right half, dL/dh_norm replaces h_norm, and the skip's
  // part of dL/dconv_act replaces dL/dgated.
  ws.d_up.resize(batch, time, 2 * inner);
  auto& d_up = ws.d_up.matrix();
  const auto& up = tape.up.matrix();
  // On the valid rows; in the padding dL/dgated is zero, hence dL/dh_norm
  // too, and proj_up's backward reads no padding of d_up.
  // Blocks of valid rows over the threads, each summing its part of
  // dL/dskip in a slot of its own, added in block order (the same sums at
  // every thread count).
  const auto skip = block.learnable_skip().transpose().array();
  zero_padding(tape.h_norm, tape.lengths);
  const Index skip_tasks = valid_row_block_tasks(batch, time);
  if (ws.skip_partial.size() < skip_tasks * inner) ws.skip_partial.resize(skip_tasks * inner);
  ws.skip_partial.head(skip_tasks * inner).setZero();
  for_valid_row_blocks(
      batch, time, tape.lengths, 32 * inner, [&](Index task, Index first, Index count) {
        auto d_skip = ws.skip_partial.segment(task * inner, inner).array();
        for (Index r = first; r < first + count; ++r) {
          const auto z = up.row(r).tail(inner).array();
          const auto conv_act = tape.conv_act.matrix().row(r).array();
          auto d_g = d_gated.row(r).array();
          auto h_norm = tape.h_norm.matrix().row(r).array();
          d_up.row(r).tail(inner).array() = d_g * (h_norm + conv_act * skip) * silu_derivative(z);
          // dL/dh_norm = dL/d(h_norm + skip * conv_act)
          h_norm = d_g * silu(z);
          d_skip += (h_norm * conv_act).transpose();
          d_g = h_norm * skip;
        }
      });
  for (Index task = 0; task < skip_tasks; ++task) {
    grads.learnable_skip() += ws.skip_partial.segment(task * inner, inner);
  }

  // The multi-head norm, then the cell: dL/dh lives in d_x_m until v_proj's
  // backward writes dL/dx_m there.
  ws.d_x_m.resize(batch, time, inner);
  auto& d_h = ws.d_x_m.matrix();
  backward(block.outnorm(), tape.h.matrix(), tape.h_norm.matrix(), grads.outnorm(), d_h);
  ws.d_qkv.resize(batch, time, 3 * inner);
  ws.d_gate_i.resize(batch, time, block.cell().num_heads());
  ws.d_gate_f.resize(batch, time, block.cell().num_heads());
  auto& d_qkv = ws.d_qkv.matrix();
  backward(block.cell(), tape.cell, d_h, grad_state.cell, d_qkv.leftCols(inner),
           d_qkv.middleCols(inner, inner), d_qkv.rightCols(inner), ws.d_gate_i.matrix(),
           ws.d_gate_f.matrix());

  // The gates read [q | k | v]; q and k come from conv_act, v from x_m.
  const auto& qkv = tape.qkv.matrix();
  backward(block.igate(), qkv, ws.d_gate_i.matrix(), grads.igate(), d_qkv, InputGradient::add);
  backward(block.fgate(), qkv, ws.d_gate_f.matrix(), grads.fgate(), d_qkv, InputGradient::add);
  const auto& conv_act = tape.conv_act.matrix();
  backward(block.q_proj(), conv_act, d_qkv.leftCols(inner), grads.q_proj(), d_gated,
           InputGradient::add);
  backward(block.k_proj(), conv_act, d_qkv.middleCols(inner, inner), grads.k_proj(), d_gated,
           InputGradient::add);
  for_row_blocks(batch * time, 16 * inner, [&](Index, Index first, Index count) {
    auto d = d_gated.middleRows(first, count).array();  // dL/dconv_act -> dL/dconv_out
    multiply_by_activation_derivative(Activation::swish,
                                      tape.conv_out.matrix().middleRows(first, count).array(), d);
  });
  backward(block.v_proj(), tape.x_m.matrix(), d_qkv.rightCols(inner), grads.v_proj(),
           ws.d_x_m.matrix());
  backward(block.conv1d(), tape.x_m, tape.lengths, tape.conv_start, tape.gated, grad_state.conv,
           grads.conv1d(), ws.d_x_m, InputGradient::add);
  d_up.leftCols(inner) = ws.d_x_m.matrix();

  // normed -> [x_m | z]; dL/dnormed replaces normed. Then the pre-norm.
  backward_valid_rows(block.proj_up(), tape.normed.matrix(), d_up, grads.proj_up(),
                      tape.normed.matrix(), time, tape.lengths, tape.packed_up);
  backward(block.xlstm_norm(), tape.x.matrix(), tape.normed.matrix(), grads.xlstm_norm(),
           grad_x.matrix(), InputGradient::add);
}

}  // namespace xlstm
