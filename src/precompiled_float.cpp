// The float half of the xlstm::precompiled library (precompiled_double.cpp has
// the other; two files so that they build in parallel): the explicit
// instantiations that xlstm/precompiled.hpp declares. Compiled with
// XLSTM_PRECOMPILED, so the declarations come first and these definitions
// follow them, from the same list.
#include "xlstm/precompiled.hpp"

#ifndef XLSTM_PRECOMPILED
#error "compiled as part of the xlstm_precompiled target, which defines XLSTM_PRECOMPILED"
#endif

#define XLSTM_DETAIL_INSTANTIATE(Class) template class Class<float>;
namespace xlstm {
XLSTM_PRECOMPILED_CLASSES(XLSTM_DETAIL_INSTANTIATE)
XLSTM_PRECOMPILED_FUNCTIONS(template, float)
}  // namespace xlstm

// The library's Eigen alignment, which consumers check at link time
// (xlstm/precompiled.hpp).
namespace xlstm::detail {
const int XLSTM_PRECOMPILED_ABI_SYMBOL = EIGEN_MAX_ALIGN_BYTES;
}  // namespace xlstm::detail
