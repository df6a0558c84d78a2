// ResidualMlp (math §13.4): a two-layer ReLU MLP with a linear skip,
//   y = output_layer(relu(hidden_layer(x))) + residual_layer(x),
// every Linear with a bias. TiRex embeds its patches with one and reads its
// quantiles out with another (its `ResidualBlock`).
#pragma once

#include <string>

#include "xlstm/core/activations.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// The intermediate results of one ResidualMlp::forward (N rows), kept by the
/// caller so that repeated calls with the same N allocate nothing.
template <typename Scalar>
struct ResidualMlpScratch {
  Matrix<Scalar> hidden, skip;
};

/// y = output_layer(relu(hidden_layer(x))) + residual_layer(x) (math §13.4).
///
///   xlstm::ResidualMlp<float> mlp(/*in*/ 16, /*hidden*/ 64, /*out*/ 32);
///   xlstm::ResidualMlpScratch<float> scratch;
///   mlp.forward(x, y, scratch);  // x: N x 16, y: N x 32
///
/// A const ResidualMlp may be shared between threads (each with its scratch).
template <typename Scalar_>
class ResidualMlp {
 public:
  using Scalar = Scalar_;

  ResidualMlp() = default;
  ResidualMlp(Index in_features, Index hidden_features, Index out_features)
      : hidden_layer_(in_features, hidden_features, true),
        output_layer_(hidden_features, out_features, true),
        residual_layer_(in_features, out_features, true) {}

  Index in_features() const { return hidden_layer_.in_features(); }
  Index hidden_features() const { return hidden_layer_.out_features(); }
  Index out_features() const { return output_layer_.out_features(); }

  Linear<Scalar>& hidden_layer() { return hidden_layer_; }
  const Linear<Scalar>& hidden_layer() const { return hidden_layer_; }
  Linear<Scalar>& output_layer() { return output_layer_; }
  const Linear<Scalar>& output_layer() const { return output_layer_; }
  Linear<Scalar>& residual_layer() { return residual_layer_; }
  const Linear<Scalar>& residual_layer() const { return residual_layer_; }

  /// x: N x in, y: N x out (y must not alias x). Each Linear runs once over
  /// all N rows.
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y, ResidualMlpScratch<Scalar>& s,
               Workload workload = Workload::sequence) const {
    check(x.cols() == in_features() && y.cols() == out_features() && y.rows() == x.rows(),
          "ResidualMlp::forward: expected N x ", in_features(), " input and N x ", out_features(),
          " output, got ", x.rows(), " x ", x.cols(), " and ", y.rows(), " x ", y.cols());
    ensure_size(s.hidden, x.rows(), hidden_features());
    ensure_size(s.skip, x.rows(), out_features());
    hidden_layer_.forward(x, s.hidden, workload);
    s.hidden.array() = relu(s.hidden.array());
    output_layer_.forward(s.hidden, y, workload);
    // Both branches carry their own bias and are added last, as the
    // reference adds the two Linear outputs.
    residual_layer_.forward(x, s.skip, workload);
    y += s.skip;
  }

  /// `hidden_layer.*`, `output_layer.*`, `residual_layer.*` (weight and bias each).
  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    self.hidden_layer_.for_each_parameter(visit, prefix + "hidden_layer.");
    self.output_layer_.for_each_parameter(visit, prefix + "output_layer.");
    self.residual_layer_.for_each_parameter(visit, prefix + "residual_layer.");
  }

  Linear<Scalar> hidden_layer_, output_layer_, residual_layer_;
};

}  // namespace xlstm
