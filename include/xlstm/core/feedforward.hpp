// GatedFeedForward (SPEC §1.7): y = proj_down(act(g) * u), [g | u] = proj_up(x).
#pragma once

#include <string>

#include "xlstm/core/activations.hpp"
#include "xlstm/core/linear.hpp"

namespace xlstm {

template <typename Scalar_>
class GatedFeedForward {
 public:
  using Scalar = Scalar_;

  GatedFeedForward() = default;
  GatedFeedForward(Index embedding_dim, Index proj_up_dim, Activation activation, bool bias)
      : proj_up_(embedding_dim, 2 * proj_up_dim, bias),
        proj_down_(proj_up_dim, embedding_dim, bias),
        activation_(activation) {}

  Index embedding_dim() const { return proj_down_.out_features(); }
  Index proj_up_dim() const { return proj_down_.in_features(); }
  Activation activation() const { return activation_; }
  Linear<Scalar>& proj_up() { return proj_up_; }
  const Linear<Scalar>& proj_up() const { return proj_up_; }
  Linear<Scalar>& proj_down() { return proj_down_; }
  const Linear<Scalar>& proj_down() const { return proj_down_; }

  /// x, y: N x E. `up` is a workspace (resized to N x 2U if needed).
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y, Matrix<Scalar>& up,
               Workload workload = Workload::sequence) const {
    const Index u = proj_up_dim();
    if (up.rows() != x.rows() || up.cols() != 2 * u) up.resize(x.rows(), 2 * u);
    proj_up_.forward(x, up, workload);
    // The first U columns are the gate, the second U the up branch.
    auto gate = up.leftCols(u).array();
    apply_activation(activation_, gate);
    gate *= up.rightCols(u).array();
    proj_down_.forward(up.leftCols(u), y, workload);
  }

  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    proj_up_.collect_parameters(prefix + "proj_up.", list);
    proj_down_.collect_parameters(prefix + "proj_down.", list);
  }

 private:
  Linear<Scalar> proj_up_, proj_down_;
  Activation activation_ = Activation::gelu;
};

}  // namespace xlstm
