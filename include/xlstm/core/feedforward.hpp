// GatedFeedForward (math §1.7): y = proj_down(act(g) * u), where the gate g
// and the up branch u are projections of x, either fused in one weight
// ([g | u] = proj_up(x), the NeurIPS sLSTM block) or as two weights
// (g = proj_up_gate(x), u = proj_up(x): xLSTM-Large's SwiGLU, TiRex).
#pragma once

#include <string>

#include "xlstm/core/activations.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/scratch.hpp"

namespace xlstm {

/// How the gate and up projections are stored.
enum class GateLayout {
  fused,  ///< one `proj_up` (2U x E): rows [0, U) the gate, [U, 2U) the up branch
  split,  ///< `proj_up_gate` (U x E) and `proj_up` (U x E)
};

/// What a recording forward keeps for the backward (design §7.3), per row of
/// x: the projections before the activation, [gate | up] (2U), and the
/// input of proj_down, act(gate) * up (U). The backward reuses both as its
/// workspace, so a recording serves one backward.
template <typename Scalar>
struct GatedFeedForwardTape {
  Matrix<Scalar> pre;     ///< N x 2U: [gate | up] before the activation
  Matrix<Scalar> hidden;  ///< N x U: act(gate) * up
  bool recorded = false;
};

/// The gated feed-forward of both model families; a SwiGLU is
/// `GatedFeedForward(e, u, Activation::swish, false, GateLayout::split)`.
///
///   xlstm::GatedFeedForward<float> ffn(64, 128, xlstm::Activation::gelu, false);
///   xlstm::Matrix<float> x = xlstm::Matrix<float>::Random(5, 64), y(5, 64), up;
///   ffn.forward(x, y, up);  // `up` is scratch, sized on first use
///
/// A const GatedFeedForward may be shared between threads; `forward` with the
/// step workload allocates nothing once `up` has its size.
template <typename Scalar_>
class GatedFeedForward {
 public:
  using Scalar = Scalar_;

  GatedFeedForward() = default;
  GatedFeedForward(Index embedding_dim, Index proj_up_dim, Activation activation, bool bias,
                   GateLayout layout = GateLayout::fused,
                   WeightStorage storage = WeightStorage::native)
      : proj_up_(embedding_dim, layout == GateLayout::fused ? 2 * proj_up_dim : proj_up_dim, bias,
                 storage),
        proj_down_(proj_up_dim, embedding_dim, bias, storage),
        activation_(activation),
        layout_(layout) {
    if (layout == GateLayout::split)
      proj_up_gate_ = Linear<Scalar>(embedding_dim, proj_up_dim, bias, storage);
  }

  Index embedding_dim() const { return proj_down_.out_features(); }
  Index proj_up_dim() const { return proj_down_.in_features(); }
  Activation activation() const { return activation_; }
  GateLayout layout() const { return layout_; }
  /// Fused: the 2U x E projection; split: the up branch only.
  Linear<Scalar>& proj_up() { return proj_up_; }
  const Linear<Scalar>& proj_up() const { return proj_up_; }
  /// Split layout only: the gate projection.
  Linear<Scalar>& proj_up_gate() { return proj_up_gate_; }
  const Linear<Scalar>& proj_up_gate() const { return proj_up_gate_; }
  Linear<Scalar>& proj_down() { return proj_down_; }
  const Linear<Scalar>& proj_down() const { return proj_down_; }

  /// x, y: N x E. `up` is scratch (resized to N x 2U unless it has that size).
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y, Matrix<Scalar>& up,
               Workload workload = Workload::sequence) const;

  /// The same, recording into `tape` what the backward needs
  /// (core/feedforward_backward.hpp, design §7.3). Gives the same y.
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
               GatedFeedForwardTape<Scalar>& tape) const;

  /// Fused: `proj_up`, `proj_down`; split: `proj_up_gate`, `proj_up`, `proj_down`.
  XLSTM_PARAMETER_VISITOR

  /// Lists the parameters of the three projections (modules or their
  /// gradients, with `for_each_parameter`) under the feed-forward's names
  /// (shared with GatedFeedForwardGradients, core/feedforward_backward.hpp).
  template <typename Visit, typename Projection>
  static void visit_parameters_as(Visit& visit, const std::string& prefix, GateLayout layout,
                                  Projection& proj_up_gate, Projection& proj_up,
                                  Projection& proj_down) {
    if (layout == GateLayout::split)
      proj_up_gate.for_each_parameter(visit, prefix + "proj_up_gate.");
    proj_up.for_each_parameter(visit, prefix + "proj_up.");
    proj_down.for_each_parameter(visit, prefix + "proj_down.");
  }

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameters_as(visit, prefix, self.layout_, self.proj_up_gate_, self.proj_up_,
                        self.proj_down_);
  }

  Linear<Scalar> proj_up_gate_, proj_up_, proj_down_;
  Activation activation_ = Activation::gelu;
  GateLayout layout_ = GateLayout::fused;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void GatedFeedForward<Scalar_>::forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
                                        Matrix<Scalar>& up, Workload workload) const {
  const Index u = proj_up_dim();
  ensure_size(up, x.rows(), 2 * u);
  if (layout_ == GateLayout::fused) {
    proj_up_.forward(x, up, workload);
  } else {
    proj_up_gate_.forward(x, up.leftCols(u), workload);
    proj_up_.forward(x, up.rightCols(u), workload);
  }
  // The first U columns are the gate, the second U the up branch.
  auto gate = up.leftCols(u).array();
  apply_activation(activation_, gate);
  gate *= up.rightCols(u).array();
  proj_down_.forward(up.leftCols(u), y, workload);
}

template <typename Scalar_>
void GatedFeedForward<Scalar_>::forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
                                        GatedFeedForwardTape<Scalar>& tape) const {
  const Index u = proj_up_dim();
  ensure_size(tape.pre, x.rows(), 2 * u);
  ensure_size(tape.hidden, x.rows(), u);
  if (layout_ == GateLayout::fused) {
    proj_up_.forward(x, tape.pre);
  } else {
    proj_up_gate_.forward(x, tape.pre.leftCols(u));
    proj_up_.forward(x, tape.pre.rightCols(u));
  }
  auto hidden = tape.hidden.array();
  hidden = tape.pre.leftCols(u).array();
  apply_activation(activation_, hidden);
  hidden *= tape.pre.rightCols(u).array();
  proj_down_.forward(tape.hidden, y);
  tape.recorded = true;
}

}  // namespace xlstm
