// The class templates that the xlstm::precompiled library (src/precompiled_*.cpp)
// instantiates for float and double, and, when XLSTM_PRECOMPILED is defined
// (linking xlstm::precompiled defines it), their explicit instantiation
// declarations: a translation unit then leaves their non-inline members
// (forward, step, constructors, initialize, ...: the ones defined outside the
// class bodies) to the library instead of compiling them again. The same for
// the backward passes of the cells, blocks, stack and language model (free
// function templates, listed below), the largest code of a training program.
//
// Not covered: member templates (e.g. `step(x, state, Out&& y)` and
// `for_each_parameter(Visit&&)`) and the inline members defined in the class
// bodies, which every translation unit still compiles; they are thin (checks,
// accessors) and call the precompiled members. Other scalar types and the
// other free function templates (io/, generate.hpp, train/) are unaffected.
//
// Included at the end of xlstm/xlstm.hpp; a translation unit that includes
// single headers may include this one after them.
#pragma once

#include "xlstm/blocks/large_block.hpp"
#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/mlstm_block_backward.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/blocks/slstm_block_backward.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/mlstm_backward.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/cells/slstm_backward.hpp"
#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/feedforward.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/weight_matrix.hpp"
#include "xlstm/model/block_stack.hpp"
#include "xlstm/model/block_stack_backward.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/language_model_backward.hpp"
#include "xlstm/model/large_model.hpp"

/// X(Class) for every class template of the precompiled library; one list for
/// the declarations below and the definitions in src/precompiled_{float,double}.cpp.
#define XLSTM_PRECOMPILED_CLASSES(X) \
  X(WeightMatrix)                    \
  X(Linear)                          \
  X(HeadwiseLinear)                  \
  X(GroupedNorm)                     \
  X(RmsNorm)                         \
  X(CausalConv1d)                    \
  X(GatedFeedForward)                \
  X(MLstmCell)                       \
  X(SLstmCell)                       \
  X(MLstmBlock)                      \
  X(SLstmBlock)                      \
  X(LargeBlock)                      \
  X(BlockStack)                      \
  X(LanguageModel)                   \
  X(LargeModel)

// The backward passes (math §2.8, §4.7, §5.5, §6.6), free function templates
// of scalar type S: `Prefix` is `extern template` for the declarations and
// `template` for the library's definitions. The layers' and cells' backward
// code they call is compiled with them, once.
#define XLSTM_PRECOMPILED_FUNCTIONS(Prefix, S)                                                    \
  Prefix void backward<S>(const SLstmCell<S>&, SLstmTape<S>&, const Sequence<S>&, SLstmState<S>&, \
                          SLstmCellGradients<S>&, Sequence<S>&);                                  \
  Prefix void backward<S>(const MLstmCell<S>&, MLstmTape<S>&, const ConstMatrixRef<S>&,           \
                          MLstmState<S>&, MatrixRef<S>, MatrixRef<S>, MatrixRef<S>, MatrixRef<S>, \
                          MatrixRef<S>);                                                          \
  Prefix void backward<S>(const MLstmCell<S>&, MLstmTape<S>&, const Sequence<S>&, MLstmState<S>&, \
                          MLstmInputGradients<S>&);                                               \
  Prefix void backward<S>(const MLstmBlock<S>&, MLstmBlockTape<S>&, const Sequence<S>&,           \
                          MLstmBlockState<S>&, MLstmBlockGradients<S>&, Sequence<S>&);            \
  Prefix void backward<S>(const SLstmBlock<S>&, SLstmBlockTape<S>&, const Sequence<S>&,           \
                          SLstmBlockState<S>&, SLstmBlockGradients<S>&, Sequence<S>&);            \
  Prefix void backward<S>(const BlockStack<S>&, BlockStackTape<S>&, const Sequence<S>&,           \
                          BlockStackState<S>&, BlockStackGradients<S>&, Sequence<S>&);            \
  Prefix void backward<S>(const LanguageModel<S>&, LanguageModelTape<S>&, const Sequence<S>&,     \
                          LanguageModelState<S>&, LanguageModelGradients<S>&);                    \
  Prefix S loss_and_backward<S>(const LanguageModel<S>&, const Tokens&, const Tokens&,            \
                                const Lengths&, LanguageModelGradients<S>&,                       \
                                LanguageModelLossWorkspace<S>&);

#ifdef XLSTM_PRECOMPILED
#define XLSTM_DETAIL_EXTERN_TEMPLATE(Class) \
  extern template class Class<float>;       \
  extern template class Class<double>;
namespace xlstm {
XLSTM_PRECOMPILED_CLASSES(XLSTM_DETAIL_EXTERN_TEMPLATE)
XLSTM_PRECOMPILED_FUNCTIONS(extern template, float)
XLSTM_PRECOMPILED_FUNCTIONS(extern template, double)
}  // namespace xlstm
#undef XLSTM_DETAIL_EXTERN_TEMPLATE

// Eigen's vectorisation is part of the ABI: a translation unit built for a
// wider vector unit than the library (say -march=native against a library built
// for x86-64) would share the library's copies of Eigen's inline functions
// (buffer allocation, packing) and crash on misaligned stores. The library
// defines a symbol that names its Eigen alignment (src/precompiled_float.cpp);
// every translation unit that includes this header refers to the symbol of its
// own alignment, so a mismatch is a link error ("undefined reference to
// xlstm::detail::precompiled_built_with_eigen_align_64") instead of a crash.
#define XLSTM_DETAIL_ABI_SYMBOL_NAME(bytes) precompiled_built_with_eigen_align_##bytes
#define XLSTM_DETAIL_ABI_SYMBOL(bytes) XLSTM_DETAIL_ABI_SYMBOL_NAME(bytes)
#define XLSTM_PRECOMPILED_ABI_SYMBOL XLSTM_DETAIL_ABI_SYMBOL(EIGEN_MAX_ALIGN_BYTES)
namespace xlstm::detail {
extern const int XLSTM_PRECOMPILED_ABI_SYMBOL;
}  // namespace xlstm::detail
#if defined(__GNUC__) || defined(__clang__)
namespace {
[[maybe_unused]] __attribute__((used)) const int* const xlstm_precompiled_abi_check =
    &xlstm::detail::XLSTM_PRECOMPILED_ABI_SYMBOL;
}  // namespace
#endif
#endif
