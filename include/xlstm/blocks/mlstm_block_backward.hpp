// STUB (replaced by the mlstm-block-backward branch)
#pragma once
#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/core/parameters.hpp"
namespace xlstm {
template <typename Scalar_>
class MLstmBlockGradients {
 public:
  using Scalar = Scalar_;
  explicit MLstmBlockGradients(const MLstmBlock<Scalar>&) {}
  void zero() {}
  XLSTM_PARAMETER_VISITOR
 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self&, Visit&, const std::string&) {}
};
template <typename Scalar>
void backward(const MLstmBlock<Scalar>&, MLstmBlockTape<Scalar>&, const Sequence<Scalar>&,
              MLstmBlockState<Scalar>&, MLstmBlockGradients<Scalar>&, Sequence<Scalar>&) {
  fail("STUB");
}
}  // namespace xlstm
