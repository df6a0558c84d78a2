// The double half of the xlstm::precompiled library (precompiled_float.cpp has
// the other; two files so that they build in parallel): the explicit
// instantiations that xlstm/precompiled.hpp declares. Compiled with
// XLSTM_PRECOMPILED, so the declarations come first and these definitions
// follow them, from the same list.
#include "xlstm/precompiled.hpp"

#ifndef XLSTM_PRECOMPILED
#error "compiled as part of the xlstm_precompiled target, which defines XLSTM_PRECOMPILED"
#endif

#define XLSTM_DETAIL_INSTANTIATE(Class) template class Class<double>;
namespace xlstm {
XLSTM_PRECOMPILED_CLASSES(XLSTM_DETAIL_INSTANTIATE)
XLSTM_PRECOMPILED_FUNCTIONS(template, double)
}  // namespace xlstm
