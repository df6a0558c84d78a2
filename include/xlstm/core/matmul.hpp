// y = x W^T, the product every projection is made of, with W stored
// (out x in) row-major as PyTorch stores nn.Linear weights.
//
// The kernels live in core/kernels/ (one header per family); this header
// gathers the public entry points:
//  - Workload, kStepKernelMaxRows and matmul_transposed (kernels/dense.hpp):
//    the register-tiled GEMM for sequences (kernels/blocked_product.hpp),
//    the allocation-free step kernel for steps;
//  - matmul_transposed_half (kernels/widening.hpp): the step kernel for
//    16-bit (bf16 / f16) weights, widened to float inside the registers.
#pragma once

#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/widening.hpp"
