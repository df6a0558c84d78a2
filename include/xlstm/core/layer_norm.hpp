// LayerNorm (math §1.2) and MultiHeadLayerNorm (math §1.3, and the xLSTM-Large
// variant of §9.2): normalisation over the last dimension, or per head.
#pragma once

#include <cmath>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// How a norm's stored weight is applied.
enum class NormWeight {
  none,    ///< no weight (scale 1)
  offset,  ///< NeurIPS xLSTM: stored w, applied as 1 + w (math §1.2, residual_weight=True)
  direct,  ///< applied as stored (xLSTM-Large, math §9.2)
};

/// Normalises each row's groups of `group_size` features (biased variance,
/// eps inside the square root), then scales per channel and adds the bias.
/// LayerNorm is the case of one group; MultiHeadLayerNorm of one group per head.
template <typename Scalar_>
class GroupedNorm {
 public:
  using Scalar = Scalar_;

  GroupedNorm() = default;
  GroupedNorm(Index features, Index num_groups, NormWeight weight, bool bias, double eps)
      : num_groups_(num_groups), weight_mode_(weight), eps_(Scalar(eps)) {
    check_positive(features, "LayerNorm", "features");
    check_positive(num_groups, "LayerNorm", "num_groups");
    check(features % num_groups == 0, "LayerNorm: 'features' (", features,
          ") must be divisible by the number of heads (", num_groups, ")");
    features_ = features;
    if (weight == NormWeight::offset) weight_.setZero(features);
    if (weight == NormWeight::direct) weight_.setOnes(features);
    if (bias) bias_.setZero(features);
  }

  Index features() const { return features_; }
  Vector<Scalar>& weight() { return weight_; }
  const Vector<Scalar>& weight() const { return weight_; }
  Vector<Scalar>& bias() { return bias_; }
  const Vector<Scalar>& bias() const { return bias_; }

  /// x, y: N x features (y may be x).
  void forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y) const;

  XLSTM_PARAMETER_VISITOR

  Index num_groups() const { return num_groups_; }
  NormWeight weight_mode() const { return weight_mode_; }
  Scalar eps() const { return eps_; }

  /// Lists `weight` and `bias`, each unless empty, under a norm's names
  /// (shared with GroupedNormGradients, core/layer_norm_backward.hpp).
  template <typename Visit, typename Weight, typename Bias>
  static void visit_parameters_as(Visit& visit, const std::string& prefix, Weight& weight,
                                  Bias& bias) {
    if (weight.size() > 0) {
      visit_parameter(visit, prefix, "weight", {std::size_t(weight.size())}, weight);
    }
    if (bias.size() > 0) visit_parameter(visit, prefix, "bias", {std::size_t(bias.size())}, bias);
  }

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    visit_parameters_as(visit, prefix, self.weight_, self.bias_);
  }

 private:
  // Row by row: Eigen evaluates `rowwise() *= (w + 1)` into a heap
  // temporary, and step() must not allocate.
  void apply_affine(MatrixRef<Scalar> y) const {
    for (Index r = 0; r < y.rows(); ++r) {
      if (weight_mode_ == NormWeight::offset) {
        y.row(r).array() *= weight_.array().transpose() + Scalar(1);
      } else if (weight_mode_ == NormWeight::direct) {
        y.row(r).array() *= weight_.array().transpose();
      }
      if (bias_.size() > 0) y.row(r) += bias_.transpose();
    }
  }

  Index features_ = 0, num_groups_ = 1;
  NormWeight weight_mode_ = NormWeight::offset;
  Scalar eps_ = Scalar(1e-5);
  Vector<Scalar> weight_, bias_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void GroupedNorm<Scalar_>::forward(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y) const {
  check(x.cols() == features_ && y.cols() == features_ && y.rows() == x.rows(),
        "LayerNorm::forward: expected N x ", features_, " input and output, got ", x.rows(), " x ",
        x.cols(), " and ", y.rows(), " x ", y.cols());
  const Index g = features_ / num_groups_;
  // Rows are independent: blocks of them over the threads for long inputs.
  for_row_blocks(x.rows(), 8 * features_, [&](Index, Index first, Index count) {
    for (Index r = first; r < first + count; ++r) {
      for (Index h = 0; h < num_groups_; ++h) {
        const auto in = x.row(r).segment(h * g, g).array();
        const Scalar mean = in.mean();
        const Scalar var = (in - mean).square().mean();
        y.row(r).segment(h * g, g).array() = (in - mean) / std::sqrt(var + eps_);
      }
    }
    apply_affine(y.middleRows(first, count));
  });
}

/// The NeurIPS LayerNorm (math §1.2): offset weight (1 + w), no bias, eps 1e-5.
template <typename Scalar>
GroupedNorm<Scalar> make_layer_norm(Index features, bool bias = false) {
  return GroupedNorm<Scalar>(features, 1, NormWeight::offset, bias, 1e-5);
}

/// The NeurIPS MultiHeadLayerNorm (math §1.3): per-head statistics, per-channel
/// offset weight (or none), eps 1e-5.
template <typename Scalar>
GroupedNorm<Scalar> make_multi_head_layer_norm(Index features, Index num_heads,
                                               bool weight = true) {
  return GroupedNorm<Scalar>(features, num_heads, weight ? NormWeight::offset : NormWeight::none,
                             false, 1e-5);
}

template <typename Scalar>
using LayerNorm = GroupedNorm<Scalar>;
template <typename Scalar>
using MultiHeadLayerNorm = GroupedNorm<Scalar>;

}  // namespace xlstm
