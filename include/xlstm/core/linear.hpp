// Linear (PyTorch nn.Linear) and HeadwiseLinear (LinearHeadwiseExpand, the
// block-diagonal projection of SPEC §1.4).
#pragma once

#include <algorithm>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/kernels/headwise.hpp"
#include "xlstm/core/matmul.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// y = x W^T + b with W stored (out, in) as in PyTorch.
template <typename Scalar_>
class Linear {
 public:
  using Scalar = Scalar_;

  Linear() = default;
  Linear(Index in_features, Index out_features, bool bias) {
    check_positive(in_features, "Linear", "in_features");
    check_positive(out_features, "Linear", "out_features");
    weight_.setZero(out_features, in_features);
    if (bias) bias_.setZero(out_features);
  }

  Index in_features() const { return weight_.cols(); }
  Index out_features() const { return weight_.rows(); }
  bool has_bias() const { return bias_.size() > 0; }

  Matrix<Scalar>& weight() { return weight_; }
  const Matrix<Scalar>& weight() const { return weight_; }
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  /// x: N x in, y: N x out (one product over all N rows). The `step`
  /// workload never allocates (core/matmul.hpp).
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
               Workload workload = Workload::sequence) const {
    check(x.cols() == in_features() && y.rows() == x.rows() && y.cols() == out_features(),
          "Linear::forward: expected x N x ", in_features(), " and y N x ", out_features(),
          ", got x ", x.rows(), " x ", x.cols(), " and y ", y.rows(), " x ", y.cols());
    matmul_transposed<Scalar>(x, weight_, y, /*accumulate=*/false, workload);
    if (has_bias()) y.rowwise() += bias_.transpose();
  }

  /// Convenience: returns x W^T + b.
  Matrix<Scalar> operator()(const ConstMatrixRef<Scalar>& x) const {
    Matrix<Scalar> y(x.rows(), out_features());
    forward(x, y);
    return y;
  }

  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    add_parameter(list, prefix, "weight", {std::size_t(out_features()), std::size_t(in_features())},
                  weight_);
    if (has_bias()) add_parameter(list, prefix, "bias", {std::size_t(out_features())}, bias_);
  }

 private:
  Matrix<Scalar> weight_;
  Vector<Scalar> bias_;
};

/// Block-diagonal linear map (SPEC §1.4): the input splits into `num_heads`
/// blocks of in/NH features, each mapped by its own (out/NH x in/NH) matrix.
/// Stored weight shape (NH, out/NH, in/NH), flattened to (NH*out/NH) x in/NH.
template <typename Scalar_>
class HeadwiseLinear {
 public:
  using Scalar = Scalar_;

  HeadwiseLinear() = default;
  HeadwiseLinear(Index in_features, Index num_heads, bool bias, Index out_features = -1) {
    check_positive(in_features, "HeadwiseLinear", "in_features");
    check_positive(num_heads, "HeadwiseLinear", "num_heads");
    if (out_features < 0) out_features = in_features;
    check(in_features % num_heads == 0 && out_features % num_heads == 0,
          "HeadwiseLinear: 'in_features' (", in_features, ") and 'out_features' (", out_features,
          ") must be divisible by 'num_heads' (", num_heads, ")");
    num_heads_ = num_heads;
    weight_.setZero(out_features, in_features / num_heads);
    if (bias) bias_.setZero(out_features);
  }

  Index num_heads() const { return num_heads_; }
  Index in_features() const { return weight_.cols() * num_heads_; }
  Index out_features() const { return weight_.rows(); }
  Index head_in() const { return weight_.cols(); }
  Index head_out() const { return weight_.rows() / num_heads_; }

  Matrix<Scalar>& weight() { return weight_; }
  const Matrix<Scalar>& weight() const { return weight_; }
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  /// y[:, h*O + o] = sum_i x[:, h*I + i] W[h, o, i] (+ b). The `step`
  /// workload never allocates (core/kernels/headwise.hpp).
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
               Workload workload = Workload::sequence) const {
    check(x.cols() == in_features() && y.rows() == x.rows() && y.cols() == out_features(),
          "HeadwiseLinear::forward: expected x N x ", in_features(), " and y N x ", out_features(),
          ", got x ", x.rows(), " x ", x.cols(), " and y ", y.rows(), " x ", y.cols());
    kernels::headwise_product<Scalar>(x, weight_, num_heads_, y, workload);
    if (bias_.size() > 0) y.rowwise() += bias_.transpose();
  }

  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    add_parameter(list, prefix, "weight",
                  {std::size_t(num_heads_), std::size_t(head_out()), std::size_t(head_in())},
                  weight_);
    if (bias_.size() > 0) add_parameter(list, prefix, "bias", {std::size_t(out_features())}, bias_);
  }

 private:
  Index num_heads_ = 1;
  Matrix<Scalar> weight_;
  Vector<Scalar> bias_;
};

}  // namespace xlstm
