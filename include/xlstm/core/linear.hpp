// Linear (PyTorch nn.Linear) and HeadwiseLinear (LinearHeadwiseExpand, the
// block-diagonal projection of math §1.4).
#pragma once

#include <algorithm>
#include <string>
#include <type_traits>

#include "xlstm/core/error.hpp"
#include "xlstm/core/kernels/headwise.hpp"
#include "xlstm/core/matmul.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/weight_matrix.hpp"

namespace xlstm {

/// Linear: y = x W^T + b, PyTorch's nn.Linear, with W stored (out, in). The
/// one dense projection of every model family: W is a WeightMatrix, so it is
/// held in Scalar or kept 16-bit (BF16/F16, e.g. a view into a mapped
/// checkpoint), and products accumulate in Scalar either way.
///
///   xlstm::Linear<float> proj(/*in*/ 64, /*out*/ 128, /*bias*/ true);
///   proj.weight().setRandom();
///   xlstm::Matrix<float> x = xlstm::Matrix<float>::Random(5, 64), y(5, 128);
///   proj.forward(x, y);
///
/// `forward` with `Workload::step` never allocates; a const Linear may be
/// used from many threads at once.
template <typename Scalar_>
class Linear {
 public:
  using Scalar = Scalar_;

  Linear() = default;
  Linear(Index in_features, Index out_features, bool bias,
         WeightStorage storage = WeightStorage::native) {
    check_positive(in_features, "Linear", "in_features");
    check_positive(out_features, "Linear", "out_features");
    if (storage == WeightStorage::native) {
      weight_ = WeightMatrix<Scalar>(out_features, in_features);
    } else if (storage == WeightStorage::int8_rows || storage == WeightStorage::q4_g32) {
      weight_ = WeightMatrix<Scalar>::quantized_zeros(storage, out_features, in_features);
    } else if (storage == WeightStorage::placeholder) {
      weight_ = WeightMatrix<Scalar>::placeholder(out_features, in_features);
    } else {
      weight_ = WeightMatrix<Scalar>::half_zeros(storage, out_features, in_features);
    }
    if (bias) bias_.setZero(out_features);
  }

  Index in_features() const { return weight_.cols(); }
  Index out_features() const { return weight_.rows(); }
  bool has_bias() const { return bias_.size() > 0; }

  /// The weights as a Scalar matrix (out x in); throws if they are 16-bit.
  Matrix<Scalar>& weight() { return weight_.native(); }
  const Matrix<Scalar>& weight() const { return weight_.native(); }
  /// The weights in whatever storage they have.
  WeightMatrix<Scalar>& weight_matrix() { return weight_; }
  const WeightMatrix<Scalar>& weight_matrix() const { return weight_; }
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  /// x: N x in, y: N x out (one product over all N rows). The `step`
  /// workload never allocates (core/matmul.hpp).
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
               Workload workload = Workload::sequence) const;

  /// Convenience: returns x W^T + b.
  Matrix<Scalar> operator()(const ConstMatrixRef<Scalar>& x) const {
    Matrix<Scalar> y(x.rows(), out_features());
    forward(x, y);
    return y;
  }

  /// `weight` (out, in) and, if present, `bias` (out).
  XLSTM_PARAMETER_VISITOR

  /// Lists `weight` (a WeightMatrix or a dense out x in matrix) and `bias`
  /// (unless empty) under a Linear's names and shapes: the one place these
  /// names live, shared by the layer and LinearGradients (core/linear_backward.hpp).
  template <typename Visit, typename Weight, typename Bias>
  static void visit_parameters_as(Visit& visit, const std::string& prefix, Weight& weight,
                                  Bias& bias) {
    if constexpr (std::is_same_v<std::remove_const_t<Weight>, WeightMatrix<Scalar>>) {
      visit_parameter(visit, prefix, "weight", weight);
    } else {
      visit_parameter(visit, prefix, "weight",
                      {std::size_t(weight.rows()), std::size_t(weight.cols())}, weight);
    }
    if (bias.size() > 0) visit_parameter(visit, prefix, "bias", {std::size_t(bias.size())}, bias);
  }

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameters_as(visit, prefix, self.weight_, self.bias_);
  }

  // Row by row: a rowwise() broadcast of a vector is not vectorised.
  void add_bias(MatrixRef<Scalar>& y) const {
    for (Index r = 0; r < y.rows(); ++r) y.row(r) += bias_.transpose();
  }

  WeightMatrix<Scalar> weight_;
  Vector<Scalar> bias_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void Linear<Scalar_>::forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
                              Workload workload) const {
  check_product_shapes(x, y, in_features(), out_features(), "Linear::forward");
  weight_.multiply_transposed(x, y, /*accumulate=*/false, workload);
  if (has_bias()) add_bias(y);
}

/// Block-diagonal linear map (math §1.4): the input splits into `num_heads`
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
               Workload workload = Workload::sequence) const;

  /// `weight` (NH, out/NH, in/NH) and, if present, `bias` (out).
  XLSTM_PARAMETER_VISITOR

  /// Lists `weight` ((NH * out/NH) x in/NH) and `bias` (unless empty) under
  /// the names and shapes of a HeadwiseLinear's parameters (shared with
  /// HeadwiseLinearGradients, core/linear_backward.hpp).
  template <typename Visit, typename Weight, typename Bias>
  static void visit_parameters_as(Visit& visit, const std::string& prefix, Index num_heads,
                                  Weight& weight, Bias& bias) {
    visit_parameter(visit, prefix, "weight",
                    {std::size_t(num_heads), std::size_t(weight.rows() / num_heads),
                     std::size_t(weight.cols())},
                    weight);
    if (bias.size() > 0) visit_parameter(visit, prefix, "bias", {std::size_t(bias.size())}, bias);
  }

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameters_as(visit, prefix, self.num_heads_, self.weight_, self.bias_);
  }

  Index num_heads_ = 1;
  Matrix<Scalar> weight_;
  Vector<Scalar> bias_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void HeadwiseLinear<Scalar_>::forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
                                      Workload workload) const {
  check_product_shapes(x, y, in_features(), out_features(), "HeadwiseLinear::forward");
  kernels::headwise_product<Scalar>(x, weight_, num_heads_, y, workload);
  if (bias_.size() > 0) y.rowwise() += bias_.transpose();
}

}  // namespace xlstm
