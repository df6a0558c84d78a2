// out (+)= a * b^T with Eigen's GEMM, in panels small enough that Eigen
// never takes a buffer from the heap: the product the sLSTM cell runs at
// every step (R y, forward) and R^T dg per step of its backward pass
// (design §7.5; dR over all steps is a blocked product), and the decoding
// of 16-bit weights' input gradients (core/linear_backward.hpp). (The mLSTM
// cell's chunk products use the library's own kernel, serial_product in
// kernels/blocked_product.hpp.)
//
// Eigen's GEMM packs its operands into buffers of at most depth x (rows of
// out) and depth x (columns of out) scalars. It takes them from the heap when
// one exceeds EIGEN_STACK_ALLOCATION_LIMIT bytes, and always when it splits
// the product over OpenMP threads, which it never does for a destination of
// at most 32 rows at compile time. So: panels of at most `block` (<= 32) rows
// and `block` columns, written through such a destination, and a depth split
// into pieces so that piece x block scalars fit the limit. Usual sLSTM sizes
// (4*DH*DH*sizeof(Scalar) <= 128 KiB, batch <= 32) are a single panel.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {
namespace kernels {

/// out = a * b^T, or out += a * b^T with `accumulate` (a: N x K, b: M x K,
/// out: N x M; any Eigen expressions with those sizes, out writable and not
/// aliasing a or b). Never allocates, never splits over threads.
template <typename A, typename B, typename Out>
void panelled_product(const A& a, const B& b, Out& out, bool accumulate) {
  using Scalar = typename Out::Scalar;
  constexpr Index kMaxPanelRows = 32;
  constexpr Index kLimitScalars = Index(EIGEN_STACK_ALLOCATION_LIMIT) / Index(sizeof(Scalar));
  using PanelMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor,
                                    kMaxPanelRows, Eigen::Dynamic>;
  using Panel = Eigen::Map<PanelMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
  const Index depth = a.cols();
  // The depth in one piece when that still allows full 32-row panels (always
  // for the forward's depth DH); else pieces of that depth.
  const Index piece = std::min(depth, std::max<Index>(1, kLimitScalars / kMaxPanelRows));
  const Index block = std::max<Index>(1, kLimitScalars / std::max<Index>(1, piece));
  const Index panel_rows = std::min(kMaxPanelRows, block);
  if (!accumulate && depth == 0) out.setZero();
  for (Index r0 = 0; r0 < out.rows(); r0 += panel_rows) {
    const Index rows = std::min(panel_rows, out.rows() - r0);
    for (Index c0 = 0; c0 < out.cols(); c0 += block) {
      const Index cols = std::min(block, out.cols() - c0);
      Panel panel(&out(r0, c0), rows, cols, Eigen::OuterStride<>(out.outerStride()));
      for (Index k0 = 0; k0 < depth; k0 += piece) {
        const Index k = std::min(piece, depth - k0);
        const auto a_part = a.block(r0, k0, rows, k);
        const auto b_part = b.block(c0, k0, cols, k);
        if (accumulate || k0 > 0) {
          panel.noalias() += a_part * b_part.transpose();
        } else {
          panel.noalias() = a_part * b_part.transpose();
        }
      }
    }
  }
}

}  // namespace kernels
}  // namespace xlstm
