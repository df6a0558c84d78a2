// A small matrix W (out x depth) that multiplies a few rows of x at every
// step, stored once as column panels: y = x W^T as a sum of outer products
// (the sLSTM recurrent kernel R, math §2.3; design §7.9).
//
// The dot-product kernels (kernels/dense.hpp) read W by rows
// and end every output element with a sum across the lanes of a packet; over
// a depth of 128 those sums cost about as much as the multiply-adds. Here W
// is transposed once into panels of kPanelWidth output columns (two packets):
// panel p holds W's rows [p w, (p + 1) w) by columns, depth x w values in a
// row. For each k the kernel loads the panel's two packets and adds them,
// times each x row's value broadcast, to accumulators that stay in the
// registers for the whole depth: no lane sums, no shuffles, and a panel of
// 16 KiB (float, depth 128, AVX-512) stays in the L1 cache while every block
// of x rows passes.
//
// Every output element (b, o) is one chain of fused multiply-adds over
// k = 0, 1, ..., depth - 1 from zero, whatever the number of x rows, the
// register block or the number of panels taken together: a row's result
// never depends on the other rows (the `row_invariant` promise of
// kernels/dense.hpp, for free), and a panel packed on the stack gives the
// same bits as one packed ahead.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "xlstm/core/error.hpp"
#include "xlstm/core/half.hpp"
#include "xlstm/core/kernels/simd.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {
namespace kernels {

/// Output columns of one panel: two packets.
template <typename Scalar>
inline constexpr Index kPanelWidth = 2 * simd::kLanes<Scalar>;

/// Writes W's rows [0, rows) (row r at w + r * stride, `depth` values) as one
/// panel at `panel`: panel[k * kPanelWidth + r] = W(r, k), zero for r >= rows
/// (rows <= kPanelWidth). With `to_bf16` every value is rounded to bf16.
template <typename Scalar>
void pack_panel(const Scalar* w, Index stride, Index rows, Index depth, bool to_bf16,
                Scalar* panel) {
  constexpr Index kWidth = kPanelWidth<Scalar>;
  if (rows < kWidth) std::fill(panel, panel + depth * kWidth, Scalar(0));
  if constexpr (std::is_same<Scalar, float>::value) {
    simd::transpose_rows(w, stride, rows, depth, panel, kWidth);
  } else {
    for (Index r = 0; r < rows; ++r) {
      for (Index k = 0; k < depth; ++k) panel[k * kWidth + r] = w[r * stride + k];
    }
  }
  if (to_bf16) {
    for (Index i = 0; i < depth * kWidth; ++i) panel[i] = round_to_bf16(panel[i]);
  }
}

/// W (out x depth) packed once as column panels (see the file comment); a
/// copy, so a change of W afterwards is not seen until the next pack().
template <typename Scalar>
class ColumnPanels {
 public:
  /// Packs the rows of `w` (any row-major block), rounded to bf16 with `to_bf16`.
  template <typename W>
  void pack(const W& w, bool to_bf16) {
    constexpr Index kWidth = kPanelWidth<Scalar>;
    out_ = w.rows();
    depth_ = w.cols();
    const Index panels = (out_ + kWidth - 1) / kWidth;
    values_.resize(panels * depth_, kWidth);
    for (Index p = 0; p < panels; ++p) {
      pack_panel(w.data() + p * kWidth * w.outerStride(), w.outerStride(),
                 std::min(kWidth, out_ - p * kWidth), depth_, to_bf16,
                 values_.data() + p * depth_ * kWidth);
    }
  }
  Index out() const { return out_; }
  Index depth() const { return depth_; }
  const Scalar* data() const { return values_.data(); }

 private:
  Index out_ = 0, depth_ = 0;
  Matrix<Scalar> values_;  // panels one after another, depth x kPanelWidth each
};

namespace detail {

/// Columns [0, columns) of y's rows [0, kRows) from kPanels panels one after
/// another (panel j at panels + j * depth * kPanelWidth): y(b, o) = the chain
/// over k of fma(panel value, x(b, k), sum), from zero or, with
/// `continue_sums`, from y's value (a depth split into pieces then gives the
/// bits of one chain). columns < kPanels * kPanelWidth only for W's last
/// columns; those go through a buffer, never past the end of y's rows.
template <int kPanels, int kRows, typename Scalar>
void panel_block(const Scalar* panels, Index depth, const Scalar* x, Index x_stride, Scalar* y,
                 Index y_stride, Index columns, bool continue_sums) {
  using Packet = simd::Packet<Scalar>;
  constexpr Index kLanes = simd::kLanes<Scalar>, kWidth = kPanelWidth<Scalar>;
  constexpr int kPackets = 2 * kPanels;
  const bool whole = columns == kPanels * kWidth;
  Packet sum[kRows][kPackets];
  for (int r = 0; r < kRows; ++r) {
    for (int p = 0; p < kPackets; ++p) {
      if (!continue_sums) {
        sum[r][p] = simd::zero<Scalar>();
      } else if (whole) {
        sum[r][p] = simd::load(y + r * y_stride + p * kLanes);
      } else {
        alignas(64) Scalar lanes[kLanes] = {};
        const Index first = p * kLanes, count = std::clamp<Index>(columns - first, 0, kLanes);
        std::copy(y + r * y_stride + first, y + r * y_stride + first + count, lanes);
        sum[r][p] = simd::load(lanes);
      }
    }
  }
  const Index panel_size = depth * kWidth;
  for (Index k = 0; k < depth; ++k) {
    Packet w[kPackets];
    for (int j = 0; j < kPanels; ++j) {
      w[2 * j] = simd::load(panels + j * panel_size + k * kWidth);
      w[2 * j + 1] = simd::load(panels + j * panel_size + k * kWidth + kLanes);
    }
    for (int r = 0; r < kRows; ++r) {
      const Packet xr = simd::broadcast(x[r * x_stride + k]);
      for (int p = 0; p < kPackets; ++p) sum[r][p] = simd::fma(w[p], xr, sum[r][p]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int p = 0; p < kPackets; ++p) {
      if (whole) {
        simd::store(y + r * y_stride + p * kLanes, sum[r][p]);
      } else {
        alignas(64) Scalar lanes[kLanes];
        simd::store(lanes, sum[r][p]);
        const Index first = p * kLanes, count = std::clamp<Index>(columns - first, 0, kLanes);
        std::copy(lanes, lanes + count, y + r * y_stride + first);
      }
    }
  }
}

/// Rows [0, rows) of x through panels [0, panel_count) by kPanels panels at
/// a time, then one at a time; `out` columns of y.
template <int kPanels, int kRows, typename Scalar>
void panel_rows(const Scalar* panels, Index panel_count, Index depth, Index out, const Scalar* x,
                Index x_stride, Scalar* y, Index y_stride, Index rows, bool continue_sums) {
  constexpr Index kWidth = kPanelWidth<Scalar>;
  Index p = 0;
  for (; p + kPanels <= panel_count; p += kPanels) {
    const Index columns = std::min(kPanels * kWidth, out - p * kWidth);
    for (Index r = 0; r + kRows <= rows; r += kRows) {
      panel_block<kPanels, kRows>(panels + p * depth * kWidth, depth, x + r * x_stride, x_stride,
                                  y + r * y_stride + p * kWidth, y_stride, columns, continue_sums);
    }
  }
  for (; p < panel_count; ++p) {
    const Index columns = std::min(kWidth, out - p * kWidth);
    for (Index r = 0; r + kRows <= rows; r += kRows) {
      panel_block<1, kRows>(panels + p * depth * kWidth, depth, x + r * x_stride, x_stride,
                            y + r * y_stride + p * kWidth, y_stride, columns, continue_sums);
    }
  }
}

}  // namespace detail

/// y(:, 0:out) = x W^T (or continued from y with `continue_sums`) for W given
/// as `panel_count` panels one after another (the columns of panel p are
/// y's [p w, p w + w) up to `out`), depth = x's columns read. The register
/// blocks: with 32 vector registers (AVX-512) 8 rows x 1 panel (16
/// accumulators), the rows past the last 8 by 4, 2, 1 x 2 panels; with 16
/// (AVX2) 4 rows x 1 panel, the rest by 2 x 2 and 1 x 4 (8 accumulators).
/// Measured against the dot-product kernels: design §7.9.
template <typename Scalar>
void panel_product(const Scalar* panels, Index panel_count, Index depth, Index out, const Scalar* x,
                   Index x_stride, Index rows, Scalar* y, Index y_stride, bool continue_sums) {
  using detail::panel_rows;
  Index r = 0;
  if constexpr (simd::kVectorRegisters >= 32) {
    r = rows / 8 * 8;
    panel_rows<1, 8>(panels, panel_count, depth, out, x, x_stride, y, y_stride, r, continue_sums);
    if (rows - r >= 4) {
      panel_rows<2, 4>(panels, panel_count, depth, out, x + r * x_stride, x_stride,
                       y + r * y_stride, y_stride, 4, continue_sums);
      r += 4;
    }
  } else {
    r = rows / 4 * 4;
    panel_rows<1, 4>(panels, panel_count, depth, out, x, x_stride, y, y_stride, r, continue_sums);
  }
  if (rows - r >= 2) {
    panel_rows<2, 2>(panels, panel_count, depth, out, x + r * x_stride, x_stride, y + r * y_stride,
                     y_stride, 2, continue_sums);
    r += 2;
  }
  if (r < rows) {
    constexpr int kPanels = simd::kVectorRegisters >= 32 ? 2 : 4;
    panel_rows<kPanels, 1>(panels, panel_count, depth, out, x + r * x_stride, x_stride,
                           y + r * y_stride, y_stride, 1, continue_sums);
  }
}

/// y = x W^T for W packed as `w`; x has w.depth() columns, y w.out().
template <typename Scalar, typename XRef, typename YRef>
void panel_product(const ColumnPanels<Scalar>& w, const XRef& x, YRef& y) {
  constexpr Index kWidth = kPanelWidth<Scalar>;
  if (x.rows() == 0 || w.out() == 0) return;
  if (w.depth() == 0) {
    y.setZero();
    return;
  }
  panel_product(w.data(), (w.out() + kWidth - 1) / kWidth, w.depth(), w.out(), x.data(),
                x.outerStride(), x.rows(), y.data(), y.outerStride(), false);
}

/// y = x W^T with W (out x depth, any row-major block) packed panel by panel
/// into a buffer on the stack as it goes (rounded to bf16 with `to_bf16`):
/// the bits of panel_product over W packed ahead, without the copy, at the
/// cost of packing at every call. Allocates nothing.
template <typename Scalar, typename XRef, typename WRef, typename YRef>
void panel_product_packing(const XRef& x, const WRef& w, bool to_bf16, YRef& y) {
  constexpr Index kWidth = kPanelWidth<Scalar>;
  constexpr Index kBufferSize = 4096;  // 16 KiB of float on the stack
  static_assert(kBufferSize % kWidth == 0, "a panel row must fit the buffer");
  if (x.rows() == 0 || w.rows() == 0) return;
  if (w.cols() == 0) {
    y.setZero();
    return;
  }
  alignas(64) Scalar buffer[kBufferSize];
  const Index piece = kBufferSize / kWidth;  // depth of one packed piece
  for (Index o = 0; o < w.rows(); o += kWidth) {
    const Index columns = std::min(kWidth, w.rows() - o);
    for (Index k0 = 0; k0 < w.cols(); k0 += piece) {
      const Index depth = std::min(piece, w.cols() - k0);
      pack_panel(w.data() + o * w.outerStride() + k0, w.outerStride(), columns, depth, to_bf16,
                 buffer);
      panel_product(static_cast<const Scalar*>(buffer), 1, depth, columns, x.data() + k0,
                    x.outerStride(), x.rows(), y.data() + o, y.outerStride(),
                    /*continue_sums=*/k0 > 0);
    }
  }
}

}  // namespace kernels
}  // namespace xlstm
