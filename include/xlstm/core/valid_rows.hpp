// Valid rows of a ragged batch: the row-wise layers (the projections) run on
// the rows b*T + t with t < lengths[b] only, packed into a dense matrix, so
// that no product is formed for padding (issue 17: no work past a row's last
// label; a parity batch of lengths 3-40 is about half padding).
#pragma once

#include <algorithm>

#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// Grow-only buffers of one packed layer: its input and output rows.
template <typename Scalar>
struct PackedRows {
  Matrix<Scalar> x, y;
};

/// Whether a batch of `time` steps has padding (some row shorter than time).
inline bool has_padding(const Lengths& lengths, Index time) {
  return std::any_of(lengths.begin(), lengths.end(), [time](Index len) { return len < time; });
}

/// The number of valid rows: the sum of the lengths (batch * time without).
inline Index count_valid_rows(const Lengths& lengths, Index batch, Index time) {
  if (lengths.empty()) return batch * time;
  Index rows = 0;
  for (Index len : lengths) rows += len;
  return rows;
}

/// Calls fn(first_row, rows) with the valid rows [b*T, b*T + lengths[b]) of
/// each batch row b that has any: for the row-wise loops of a layer whose
/// padding nothing reads.
template <typename Fn>
void for_each_valid_range(Index batch, Index time, const Lengths& lengths, Fn&& fn) {
  for (Index b = 0; b < batch; ++b) {
    const Index len = length_of(lengths, b, time);
    if (len > 0) fn(b * time, len);
  }
}

/// The tasks of for_valid_row_blocks: per batch row, its blocks of
/// kRowsPerBlock steps.
inline Index valid_row_block_tasks(Index batch, Index time) {
  return batch * ((time + kRowsPerBlock - 1) / kRowsPerBlock);
}

/// Calls fn(task, first_row, rows) for the valid rows of each batch row in
/// blocks of kRowsPerBlock steps (task < valid_row_block_tasks(batch, time),
/// fixed by the shapes: partial sums kept per task are the same at every
/// thread count), over the threads when rows x `row_cost` (about the
/// operations per row) pays for a parallel region.
template <typename Fn>
void for_valid_row_blocks(Index batch, Index time, const Lengths& lengths, Index row_cost,
                          Fn&& fn) {
  const Index per_row = (time + kRowsPerBlock - 1) / kRowsPerBlock;
  const bool parallel = double(batch) * double(time) * double(row_cost) >= double(Index(1) << 16);
  parallel_for(batch * per_row, parallel, [&](Index task) {
    const Index b = task / per_row, first = (task % per_row) * kRowsPerBlock;
    const Index len = length_of(lengths, b, time);
    if (first < len) fn(task, b * time + first, std::min(kRowsPerBlock, len - first));
  });
}

/// The leading `rows` x `cols` of `buffer`, grown (never shrunk) to hold
/// them: batches of varying lengths reuse one allocation.
template <typename Scalar>
auto leading_rows(Matrix<Scalar>& buffer, Index rows, Index cols) {
  if (buffer.rows() < rows || buffer.cols() != cols) {
    buffer.resize(std::max(rows, buffer.cols() == cols ? buffer.rows() : Index(0)), cols);
  }
  return buffer.topRows(rows);
}

/// Copies the valid rows of `full` ((B*T) rows, row b*T + t) in order into
/// the leading rows of `packed`.
template <typename Scalar>
void pack_valid_rows(const ConstMatrixRef<Scalar>& full, Index time, const Lengths& lengths,
                     Matrix<Scalar>& packed) {
  const Index batch = full.rows() / time;
  auto out = leading_rows(packed, count_valid_rows(lengths, batch, time), full.cols());
  Index row = 0;
  for (Index b = 0; b < batch; ++b) {
    const Index len = length_of(lengths, b, time);
    out.middleRows(row, len) = full.middleRows(b * time, len);
    row += len;
  }
}

/// The inverse of pack_valid_rows: the packed rows back to their places in
/// `full`, zero in the padding.
template <typename Scalar>
void unpack_valid_rows(const ConstMatrixRef<Scalar>& packed, Index time, const Lengths& lengths,
                       MatrixRef<Scalar> full) {
  const Index batch = full.rows() / time;
  Index row = 0;
  for (Index b = 0; b < batch; ++b) {
    const Index len = length_of(lengths, b, time);
    full.middleRows(b * time, len) = packed.middleRows(row, len);
    full.middleRows(b * time + len, time - len).setZero();
    row += len;
  }
}

/// y = layer(x) on the valid rows; y is zero in the padding when there is
/// any (else the plain forward). Each valid row's output is the plain
/// forward's: a row of a product does not depend on the other rows.
template <typename Layer, typename Scalar = typename Layer::Scalar>
void forward_valid_rows(const Layer& layer, const ConstMatrixRef<typename Layer::Scalar>& x,
                        MatrixRef<typename Layer::Scalar> y, Index time, const Lengths& lengths,
                        PackedRows<typename Layer::Scalar>& buffers) {
  if (!has_padding(lengths, time)) {
    layer.forward(x, y);
    return;
  }
  pack_valid_rows<Scalar>(x, time, lengths, buffers.x);
  const Index rows = count_valid_rows(lengths, x.rows() / time, time);
  auto packed_y = leading_rows(buffers.y, rows, y.cols());
  layer.forward(buffers.x.topRows(rows), packed_y);
  unpack_valid_rows<Scalar>(packed_y, time, lengths, y);
}

/// The layer's backward (core/linear_backward.hpp) on the valid rows:
/// dL/dparameters from those rows only (the padding's grad_y is zero, so it
/// adds nothing but work) and dL/dx, zero in the padding, into `grad_x`
/// (which may be `x` itself).
template <typename Layer, typename Gradients, typename Scalar = typename Layer::Scalar>
void backward_valid_rows(const Layer& layer, const ConstMatrixRef<typename Layer::Scalar>& x,
                         const ConstMatrixRef<typename Layer::Scalar>& grad_y, Gradients& grads,
                         MatrixRef<typename Layer::Scalar> grad_x, Index time,
                         const Lengths& lengths, PackedRows<typename Layer::Scalar>& buffers) {
  if (!has_padding(lengths, time)) {
    backward(layer, x, grad_y, grads, grad_x);
    return;
  }
  pack_valid_rows<Scalar>(x, time, lengths, buffers.x);
  pack_valid_rows<Scalar>(grad_y, time, lengths, buffers.y);
  const Index rows = count_valid_rows(lengths, x.rows() / time, time);
  auto packed_x = buffers.x.topRows(rows);
  backward(layer, packed_x, buffers.y.topRows(rows), grads, packed_x);
  unpack_valid_rows<Scalar>(packed_x, time, lengths, grad_x);
}

}  // namespace xlstm
