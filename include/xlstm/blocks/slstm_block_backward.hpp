// The backward pass of the sLSTM block (math §3.4, design §7): through the
// feed-forward and its pre-norm, the residuals, the group norm, the sLSTM
// cell (cells/slstm_backward.hpp), the gate projections, the conv + SiLU and
// the pre-norm (LayerNorm, or RMSNorm as in TiRex), with respect to the
// parameters, the input and the initial
// state (conv window and cell state), for ragged batches.
//
//   xlstm::SLstmBlockTape<float> tape;
//   block.forward(x, state, y, tape);                   // records
//   xlstm::SLstmBlockGradients<float> grads(block);     // zeros, named like the parameters
//   auto grad_state = block.initial_state(batch);       // cotangent of the final state
//   xlstm::Sequence<float> grad_x;
//   xlstm::backward(block, tape, grad_y, grad_state, grads, grad_x);
//   // grads += dL/dparameters; grad_state = dL/d(initial state); grad_x = dL/dx
#pragma once

#include <algorithm>
#include <string>

#include "xlstm/blocks/block_backward_checks.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/cells/slstm_backward.hpp"
#include "xlstm/core/activations_backward.hpp"
#include "xlstm/core/causal_conv1d_backward.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/feedforward_backward.hpp"
#include "xlstm/core/layer_norm_backward.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/rms_norm_backward.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// The gradients of an SLstmBlock's parameters: one gradient object per
/// layer, listed under the block's names and shapes (design §7.2).
template <typename Scalar_>
class SLstmBlockGradients {
 public:
  using Scalar = Scalar_;

  explicit SLstmBlockGradients(const SLstmBlock<Scalar>& block)
      : names_(block.config().names),
        has_feedforward_(block.has_feedforward()),
        rms_pre_norm_(block.config().pre_norm == PreNormKind::rms_norm),
        xlstm_norm_(block.xlstm_norm()),
        conv1d_(block.conv1d()),
        input_gate_(block.gate_projection(0)),
        forget_gate_(block.gate_projection(1)),
        z_gate_(block.gate_projection(2)),
        o_gate_(block.gate_projection(3)),
        cell_(block.cell()),
        group_norm_(block.group_norm()),
        ffn_norm_(block.ffn_norm()),
        ffn_(block.ffn()),
        rms_norm_(block.rms_norm()),
        ffn_rms_norm_(block.ffn_rms_norm()) {}

  GroupedNormGradients<Scalar>& xlstm_norm() { return xlstm_norm_; }
  CausalConv1dGradients<Scalar>& conv1d() { return conv1d_; }
  /// g = 0..3: the i, f, z, o gate projections (as SLstmBlock::gate_projection).
  HeadwiseLinearGradients<Scalar>& gate_projection(Index g) {
    check(g >= 0 && g < 4,
          "SLstmBlockGradients::gate_projection: argument 'g' must be in [0, 4), "
          "got ",
          g);
    return g == 0 ? input_gate_ : g == 1 ? forget_gate_ : g == 2 ? z_gate_ : o_gate_;
  }
  SLstmCellGradients<Scalar>& cell() { return cell_; }
  GroupedNormGradients<Scalar>& group_norm() { return group_norm_; }
  GroupedNormGradients<Scalar>& ffn_norm() { return ffn_norm_; }
  /// The RMSNorm pre-norms' (PreNormKind::rms_norm; else empty).
  RmsNormGradients<Scalar>& rms_norm() { return rms_norm_; }
  RmsNormGradients<Scalar>& ffn_rms_norm() { return ffn_rms_norm_; }
  GatedFeedForwardGradients<Scalar>& ffn() { return ffn_; }

  /// Member by member: a training step calls it, and listing the parameters
  /// would build their names (allocations; design §7.6).
  void zero() {
    for (auto* norm : {&xlstm_norm_, &group_norm_, &ffn_norm_}) norm->zero();
    for (auto* gate : {&input_gate_, &forget_gate_, &z_gate_, &o_gate_}) gate->zero();
    conv1d_.zero();
    cell_.zero();
    ffn_.zero();
    rms_norm_.zero();
    ffn_rms_norm_.zero();
  }

  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    if (self.rms_pre_norm_) {
      SLstmBlock<Scalar>::visit_parameters_as(
          visit, prefix, self.names_, self.has_feedforward_, self.rms_norm_, self.conv1d_,
          self.input_gate_, self.forget_gate_, self.z_gate_, self.o_gate_, self.cell_,
          self.group_norm_, self.ffn_rms_norm_, self.ffn_);
    } else {
      SLstmBlock<Scalar>::visit_parameters_as(
          visit, prefix, self.names_, self.has_feedforward_, self.xlstm_norm_, self.conv1d_,
          self.input_gate_, self.forget_gate_, self.z_gate_, self.o_gate_, self.cell_,
          self.group_norm_, self.ffn_norm_, self.ffn_);
    }
  }

  SLstmBlockNames names_;
  bool has_feedforward_;
  bool rms_pre_norm_;
  GroupedNormGradients<Scalar> xlstm_norm_;
  CausalConv1dGradients<Scalar> conv1d_;
  HeadwiseLinearGradients<Scalar> input_gate_, forget_gate_, z_gate_, o_gate_;
  SLstmCellGradients<Scalar> cell_;
  GroupedNormGradients<Scalar> group_norm_, ffn_norm_;
  GatedFeedForwardGradients<Scalar> ffn_;
  RmsNormGradients<Scalar> rms_norm_, ffn_rms_norm_;
};

namespace detail {

/// The backward of the block's pre-norm: LayerNorm or RMSNorm (math §3.4, §13.3).
template <typename Scalar>
void pre_norm_backward(bool rms, const GroupedNorm<Scalar>& layer_norm,
                       const RmsNorm<Scalar>& rms_norm, ConstMatrixArg<Scalar> x,
                       ConstMatrixArg<Scalar> grad_y,
                       GroupedNormGradients<Scalar>& layer_norm_grads,
                       RmsNormGradients<Scalar>& rms_norm_grads, MatrixArg<Scalar> grad_x) {
  if (rms) {
    backward(rms_norm, x, grad_y, rms_norm_grads, grad_x, InputGradient::add);
  } else {
    backward(layer_norm, x, grad_y, layer_norm_grads, grad_x, InputGradient::add);
  }
}

}  // namespace detail

/// The backward pass of `block` over the forward recorded in `tape`
/// (math §3.4, design §7.4):
///  - `grad_y`: dL/dy, B x T x E (ignored past a row's length);
///  - `grad_state`: in, dL/d(final state) (conv window and cell state; make
///    it with initial_state(batch): zeros when the loss does not see it);
///    out, dL/d(initial state);
///  - `grads`: dL/d(parameters) is added to it;
///  - `grad_x`: out, dL/dx, B x T x E (zero past a row's length); not grad_y.
/// Consumes the tape (its storage becomes the workspace). Allocates nothing
/// once grad_x has its size.
template <typename Scalar>
void backward(const SLstmBlock<Scalar>& block, SLstmBlockTape<Scalar>& tape,
              const Sequence<Scalar>& grad_y, SLstmBlockState<Scalar>& grad_state,
              SLstmBlockGradients<Scalar>& grads, Sequence<Scalar>& grad_x) {
  detail::check_block_backward("backward (SLstmBlock)",
                               "backward (SLstmBlock), argument 'grad_state'", block, tape.recorded,
                               tape.x, grad_y, grad_state, grad_x);
  const Index e = block.embedding_dim();
  const bool rms = block.config().pre_norm == PreNormKind::rms_norm;
  check(
      grads.rms_norm().weight().size() == block.rms_norm().weight().size(),
      "backward (SLstmBlock): argument 'grads' was made for a block with the other pre-norm kind");
  tape.recorded = false;  // from here on its storage is the workspace

  // The residual path: grad_x starts as dL/dy (zero past the lengths, where
  // the output is zero whatever the input) and collects dL/dx1 (math §3.4).
  grad_x = grad_y;
  zero_padding(grad_x, tape.lengths);
  auto& work = tape.work;
  if (block.has_feedforward()) {
    backward(block.ffn(), tape.ffn_in.matrix(), tape.ffn, grad_x.matrix(), grads.ffn(),
             work.matrix());
    detail::pre_norm_backward(rms, block.ffn_norm(), block.ffn_rms_norm(), tape.x1.matrix(),
                              work.matrix(), grads.ffn_norm(), grads.ffn_rms_norm(),
                              grad_x.matrix());
  }
  // x1 = x + GroupNorm(cell output).
  backward(block.group_norm(), tape.cell_out.matrix(), grad_x.matrix(), grads.group_norm(),
           work.matrix());
  backward(block.cell(), tape.cell, work, grad_state.cell, grads.cell(), tape.preact);
  // Gate projections: i, f from the conv path, z, o from the normed input.
  const auto& d_preact = tape.preact.matrix();
  auto& d_conv_act = work.matrix();
  auto& d_normed = tape.conv_out.matrix();  // conv_out is read for the SiLU first
  backward(block.gate_projection(0), tape.conv_act.matrix(), d_preact.leftCols(e),
           grads.gate_projection(0), d_conv_act);
  backward(block.gate_projection(1), tape.conv_act.matrix(), d_preact.middleCols(e, e),
           grads.gate_projection(1), d_conv_act, InputGradient::add);
  if (block.conv1d().is_identity()) {
    d_normed = d_conv_act;
  } else {
    auto d = d_conv_act.array();
    multiply_by_activation_derivative(Activation::swish, tape.conv_out.matrix().array(), d);
  }
  backward(block.gate_projection(2), tape.normed.matrix(), d_preact.middleCols(2 * e, e),
           grads.gate_projection(2), d_normed,
           block.conv1d().is_identity() ? InputGradient::add : InputGradient::replace);
  backward(block.gate_projection(3), tape.normed.matrix(), d_preact.rightCols(e),
           grads.gate_projection(3), d_normed, InputGradient::add);
  if (!block.conv1d().is_identity()) {
    backward(block.conv1d(), tape.normed, tape.lengths, tape.conv_start, work, grad_state.conv,
             grads.conv1d(), tape.conv_out, InputGradient::add);
  }
  detail::pre_norm_backward(rms, block.xlstm_norm(), block.rms_norm(), tape.x.matrix(), d_normed,
                            grads.xlstm_norm(), grads.rms_norm(), grad_x.matrix());
}

}  // namespace xlstm
