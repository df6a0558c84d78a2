// The backward pass of GatedFeedForward (math §1.14), fused and split
// layouts, every activation of the registry. The forward records the
// projections before the activation and the input of proj_down in a
// GatedFeedForwardTape (core/feedforward.hpp); the backward reuses that
// storage as its workspace. The input x is kept by the caller.
//
//   xlstm::GatedFeedForwardTape<float> tape;
//   ffn.forward(x, y, tape);
//   xlstm::GatedFeedForwardGradients<float> grads(ffn);
//   xlstm::backward(ffn, x, tape, grad_y, grads, grad_x);
#pragma once

#include <string>

#include "xlstm/core/activations_backward.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/feedforward.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// dL/d(parameters) of a GatedFeedForward: one LinearGradients per
/// projection, listed under the feed-forward's names.
template <typename Scalar_>
class GatedFeedForwardGradients {
 public:
  using Scalar = Scalar_;

  explicit GatedFeedForwardGradients(const GatedFeedForward<Scalar>& ffn)
      : layout_(ffn.layout()),
        proj_up_gate_(ffn.proj_up_gate()),
        proj_up_(ffn.proj_up()),
        proj_down_(ffn.proj_down()) {}

  /// Split layout only.
  LinearGradients<Scalar>& proj_up_gate() { return proj_up_gate_; }
  const LinearGradients<Scalar>& proj_up_gate() const { return proj_up_gate_; }
  LinearGradients<Scalar>& proj_up() { return proj_up_; }
  const LinearGradients<Scalar>& proj_up() const { return proj_up_; }
  LinearGradients<Scalar>& proj_down() { return proj_down_; }
  const LinearGradients<Scalar>& proj_down() const { return proj_down_; }

  void zero() {
    proj_up_gate_.zero();
    proj_up_.zero();
    proj_down_.zero();
  }

  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    GatedFeedForward<Scalar>::visit_parameters_as(visit, prefix, self.layout_, self.proj_up_gate_,
                                                  self.proj_up_, self.proj_down_);
  }

  GateLayout layout_;
  LinearGradients<Scalar> proj_up_gate_, proj_up_, proj_down_;
};

/// The backward pass of `ffn` (math §1.14) over the forward recorded in
/// `tape` from input `x` (N x E): adds the parameter gradients to `grads` and
/// writes (or adds) dL/dx to `grad_x` (N x E). Consumes the tape (its
/// storage becomes the workspace). Allocates nothing.
template <typename Scalar>
void backward(const GatedFeedForward<Scalar>& ffn, ConstMatrixArg<Scalar> x,
              GatedFeedForwardTape<Scalar>& tape, ConstMatrixArg<Scalar> grad_y,
              GatedFeedForwardGradients<Scalar>& grads, MatrixArg<Scalar> grad_x,
              InputGradient mode = InputGradient::replace) {
  const char* where = "backward (GatedFeedForward)";
  const Index u = ffn.proj_up_dim();
  check_tape_recorded(tape.recorded, where);
  check(tape.pre.rows() == x.rows() && tape.pre.cols() == 2 * u && tape.hidden.cols() == u, where,
        ": argument 'tape' was recorded for other shapes: expected ", x.rows(), " x ", 2 * u,
        " pre-activations, got ", tape.pre.rows(), " x ", tape.pre.cols());
  check(grads.proj_down().weight().rows() == ffn.embedding_dim() &&
            grads.proj_down().weight().cols() == u,
        where, ": argument 'grads' belongs to another feed-forward");
  tape.recorded = false;
  // proj_down: hidden = act(g) * up is its input; the hidden gradient
  // replaces it in place.
  backward(ffn.proj_down(), tape.hidden, grad_y, grads.proj_down(), tape.hidden);
  auto gate = tape.pre.leftCols(u).array();
  auto up = tape.pre.rightCols(u).array();
  auto d_hidden = tape.hidden.array();
  up *= d_hidden;                                                 // d_hidden * up
  multiply_by_activation(ffn.activation(), gate, d_hidden);       // d_up = d_hidden * act(g)
  multiply_by_activation_derivative(ffn.activation(), gate, up);  // d_g = d_hidden * up * act'(g)
  gate = up;
  up = d_hidden;
  if (ffn.layout() == GateLayout::fused) {
    backward(ffn.proj_up(), x, tape.pre, grads.proj_up(), grad_x, mode);
  } else {
    backward(ffn.proj_up_gate(), x, tape.pre.leftCols(u), grads.proj_up_gate(), grad_x, mode);
    backward(ffn.proj_up(), x, tape.pre.rightCols(u), grads.proj_up(), grad_x, InputGradient::add);
  }
}

}  // namespace xlstm
