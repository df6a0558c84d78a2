// The class templates that the xlstm::precompiled library (src/precompiled_*.cpp)
// instantiates for float and double, and, when XLSTM_PRECOMPILED is defined
// (linking xlstm::precompiled defines it), their explicit instantiation
// declarations: a translation unit then leaves their non-inline members
// (forward, step, constructors, initialize, ...: the ones defined outside the
// class bodies) to the library instead of compiling them again.
//
// Not covered: member templates (e.g. `step(x, state, Out&& y)` and
// `for_each_parameter(Visit&&)`) and the inline members defined in the class
// bodies, which every translation unit still compiles; they are thin (checks,
// accessors) and call the precompiled members. Other scalar types and the free
// function templates (io/, generate.hpp) are unaffected.
//
// Included at the end of xlstm/xlstm.hpp; a translation unit that includes
// single headers may include this one after them.
#pragma once

#include "xlstm/blocks/large_block.hpp"
#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/slstm_block.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/feedforward.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/weight_matrix.hpp"
#include "xlstm/model/block_stack.hpp"
#include "xlstm/model/language_model.hpp"
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

#ifdef XLSTM_PRECOMPILED
#define XLSTM_DETAIL_EXTERN_TEMPLATE(Class) \
  extern template class Class<float>;       \
  extern template class Class<double>;
namespace xlstm {
XLSTM_PRECOMPILED_CLASSES(XLSTM_DETAIL_EXTERN_TEMPLATE)
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
