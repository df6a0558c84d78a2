// WeightMatrix: a (out x in) weight used as y = x W^T, stored either in the
// model's Scalar type or as 16-bit floats (BF16/F16) that stay 16-bit in
// memory — often a view straight into a memory-mapped checkpoint.
//
// This class only stores the weights; its products run the kernels of
// core/kernels/: dense.hpp for native storage, widening.hpp for 16-bit
// storage (accumulation in Scalar, and no full-size float copy of the
// weights ever exists).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/half.hpp"
#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/widening.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

enum class WeightStorage {
  native,  ///< Scalar, owned
  bf16,    ///< bfloat16 bits
  f16,     ///< IEEE half bits
};

template <typename Scalar_>
class WeightMatrix {
 public:
  using Scalar = Scalar_;

  WeightMatrix() = default;
  explicit WeightMatrix(Matrix<Scalar> native) : native_(std::move(native)) {
    rows_ = native_.rows();
    cols_ = native_.cols();
  }
  WeightMatrix(Index rows, Index cols) : WeightMatrix(Matrix<Scalar>::Zero(rows, cols)) {}

  /// A view of rows x cols 16-bit values at `bits` (row-major). `keep_alive`
  /// owns the memory (e.g. the mapped file) for as long as the view lives.
  static WeightMatrix half_view(WeightStorage storage, const std::uint16_t* bits, Index rows,
                                Index cols, std::shared_ptr<const void> keep_alive) {
    check(storage != WeightStorage::native, "WeightMatrix::half_view: storage must be bf16 or f16");
    WeightMatrix w;
    w.storage_ = storage;
    w.half_ = bits;
    w.rows_ = rows;
    w.cols_ = cols;
    w.keep_alive_ = std::move(keep_alive);
    return w;
  }

  /// Owned 16-bit values (used when the file's data is not 2-byte aligned),
  /// copied into storage aligned like Eigen's (see half_zeros).
  static WeightMatrix half_owned(WeightStorage storage, const std::vector<std::uint16_t>& bits,
                                 Index rows, Index cols) {
    check(Index(bits.size()) == rows * cols, "WeightMatrix::half_owned: ", bits.size(),
          " values for a ", rows, " x ", cols, " matrix");
    WeightMatrix w = half_zeros(storage, rows, cols);
    std::copy(bits.begin(), bits.end(), w.owned_half_bits());
    return w;
  }

  /// Owned 16-bit zeros, to be filled through owned_half_bits(). The buffer
  /// has Eigen's alignment (64 bytes with AVX-512): the step kernel loads 32
  /// bytes at a time, and from a std::vector's 16-byte-aligned buffer every
  /// other load straddled two cache lines (README, Performance, has the
  /// measurement).
  static WeightMatrix half_zeros(WeightStorage storage, Index rows, Index cols) {
    check(rows >= 0 && cols >= 0, "WeightMatrix::half_zeros: expected a size >= 0, got ", rows,
          " x ", cols);
    using Bits = Eigen::Matrix<std::uint16_t, Eigen::Dynamic, 1>;
    auto owner = std::make_shared<Bits>(Bits::Zero(rows * cols));
    std::uint16_t* data = owner->data();
    WeightMatrix w = half_view(storage, data, rows, cols, std::move(owner));
    w.owned_bits_ = data;
    return w;
  }

  /// Writable 16-bit values of owned 16-bit storage (nullptr for views of a
  /// file and for native storage), e.g. to fill a fresh model.
  std::uint16_t* owned_half_bits() { return owned_bits_; }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  WeightStorage storage() const { return storage_; }
  bool is_half() const { return storage_ != WeightStorage::native; }
  /// Bytes the weights occupy (what one full product reads).
  std::size_t bytes() const {
    return std::size_t(rows_ * cols_) * (is_half() ? 2 : sizeof(Scalar));
  }

  /// The Scalar matrix (native storage only).
  Matrix<Scalar>& native() {
    check(!is_half(), "WeightMatrix::native: the weights are stored as 16-bit floats");
    return native_;
  }
  const Matrix<Scalar>& native() const {
    check(!is_half(), "WeightMatrix::native: the weights are stored as 16-bit floats");
    return native_;
  }

  /// Rows [start, start + count) as a matrix of its own (a view for 16-bit
  /// storage, a copy for native storage).
  WeightMatrix row_range(Index start, Index count) const {
    check(start >= 0 && count >= 0 && start + count <= rows_, "WeightMatrix::row_range: rows [",
          start, ", ", start + count, ") out of [0, ", rows_, ")");
    if (!is_half()) return WeightMatrix(Matrix<Scalar>(native_.middleRows(start, count)));
    return half_view(storage_, half_ + start * cols_, count, cols_, keep_alive_);  // a view
  }

  /// out = row r of W, decoded.
  template <typename Out>
  void copy_row(Index r, Out&& out) const {
    if (!is_half()) {
      out = native_.row(r);
      return;
    }
    for (Index c = 0; c < cols_; ++c) out(c) = Scalar(decode(half_[r * cols_ + c]));
  }

  /// out = W[r0 : r0 + out.rows(), c0 : c0 + out.cols()], decoded (e.g. a
  /// panel of 16-bit weights for a product with W itself rather than W^T).
  template <typename Out>
  void copy_block(Index r0, Index c0, Out&& out) const {
    if (!is_half()) {
      out = native_.block(r0, c0, out.rows(), out.cols());
      return;
    }
    for (Index r = 0; r < out.rows(); ++r) {
      const std::uint16_t* row = half_ + (r0 + r) * cols_ + c0;
      for (Index c = 0; c < out.cols(); ++c) out(r, c) = Scalar(decode(row[c]));
    }
  }

  /// y = x W^T, or y += x W^T with `accumulate`. x: N x cols, y: N x rows.
  /// The `step` workload never allocates (core/kernels/).
  void multiply_transposed(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
                           bool accumulate = false, Workload workload = Workload::sequence) const;

 private:
  float decode(std::uint16_t bits) const {
    return storage_ == WeightStorage::bf16 ? bf16_to_float(bits) : f16_to_float(bits);
  }

  WeightStorage storage_ = WeightStorage::native;
  Index rows_ = 0, cols_ = 0;
  Matrix<Scalar> native_;
  const std::uint16_t* half_ = nullptr;
  /// half_ as writable bits when it points into a buffer of our own (else null).
  std::uint16_t* owned_bits_ = nullptr;
  std::shared_ptr<const void> keep_alive_;
};

// Out of the class body, hence not inline: with XLSTM_PRECOMPILED (xlstm/precompiled.hpp)
// a translation unit leaves these to the precompiled library.
template <typename Scalar_>
void WeightMatrix<Scalar_>::multiply_transposed(const ConstMatrixRef<Scalar>& x,
                                                MatrixRef<Scalar> y, bool accumulate,
                                                Workload workload) const {
  check_product_shapes(x, y, cols_, rows_, "WeightMatrix::multiply_transposed");
  if (!is_half()) {
    matmul_transposed<Scalar>(x, native_, y, accumulate, workload);
    return;
  }
  kernels::half_product<Scalar>(x, half_, rows_, cols_, storage_ == WeightStorage::bf16, y,
                                accumulate, workload);
}

}  // namespace xlstm
