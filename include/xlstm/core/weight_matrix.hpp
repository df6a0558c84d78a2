// WeightMatrix: a (out x in) weight used as y = x W^T, stored either in the
// model's Scalar type, as 16-bit floats (BF16/F16) that stay 16-bit in
// memory — often a view straight into a memory-mapped checkpoint — or
// quantised to 8 or 4 bits with scales (math §16).
//
// This class only stores the weights; its products run the kernels of
// core/kernels/: dense.hpp for native storage, widening.hpp for 16-bit
// storage, quantized.hpp for 8- and 4-bit storage (accumulation in Scalar,
// and no full-size float copy of the weights ever exists).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/half.hpp"
#include "xlstm/core/kernels/dense.hpp"
#include "xlstm/core/kernels/quantized.hpp"
#include "xlstm/core/kernels/widening.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

enum class WeightStorage {
  native,  ///< Scalar, owned
  bf16,    ///< bfloat16 bits
  f16,     ///< IEEE half bits
  /// int8 values, one float scale per output row, symmetric (math §16.1).
  int8_rows,
  /// 4-bit values in groups of 32 input columns, one bfloat16 scale per
  /// group, symmetric, two values per byte (math §16.2).
  q4_g32,
  /// No weights yet, only the shape: what a loader builds a model of before
  /// it puts the file's matrices in (io/large_checkpoint.hpp), so that a 7B
  /// model never exists as 28 GB of float zeros first. Holds no memory; any
  /// use of the weights throws until the matrix is replaced.
  placeholder,
};

/// The name of a storage format, for messages.
inline const char* storage_name(WeightStorage storage) {
  switch (storage) {
    case WeightStorage::native:
      return "native";
    case WeightStorage::bf16:
      return "bf16";
    case WeightStorage::f16:
      return "f16";
    case WeightStorage::int8_rows:
      return "int8_rows";
    case WeightStorage::q4_g32:
      return "q4_g32";
    case WeightStorage::placeholder:
      return "placeholder";
  }
  return "unknown";
}

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
    check(storage == WeightStorage::bf16 || storage == WeightStorage::f16,
          "WeightMatrix::half_view: argument 'storage' must be bf16 or f16, got ",
          storage_name(storage));
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

  /// A rows x cols matrix without weights (WeightStorage::placeholder): its
  /// shape for a loader to check a file against, and nothing else.
  static WeightMatrix placeholder(Index rows, Index cols) {
    check(rows >= 0 && cols >= 0, "WeightMatrix::placeholder: expected a size >= 0, got ", rows,
          " x ", cols);
    WeightMatrix w;
    w.storage_ = WeightStorage::placeholder;
    w.rows_ = rows;
    w.cols_ = cols;
    return w;
  }
  bool is_placeholder() const { return storage_ == WeightStorage::placeholder; }

  /// Writable 16-bit values of owned 16-bit storage (nullptr for views of a
  /// file and for native storage), e.g. to fill a fresh model.
  std::uint16_t* owned_half_bits() { return owned_bits_; }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  WeightStorage storage() const { return storage_; }
  bool is_native() const { return storage_ == WeightStorage::native; }
  /// 16-bit floats (bf16 or f16).
  bool is_half() const { return storage_ == WeightStorage::bf16 || storage_ == WeightStorage::f16; }
  /// 8- or 4-bit values with scales (math §16).
  bool is_quantized() const {
    return storage_ == WeightStorage::int8_rows || storage_ == WeightStorage::q4_g32;
  }
  /// Bytes the weights occupy (what one full product reads), scales included.
  std::size_t bytes() const {
    const std::size_t n = std::size_t(rows_ * cols_);
    switch (storage_) {
      case WeightStorage::native:
        return n * sizeof(Scalar);
      case WeightStorage::bf16:
      case WeightStorage::f16:
        return n * 2;
      case WeightStorage::int8_rows:
        return n + std::size_t(rows_) * sizeof(float);
      case WeightStorage::q4_g32:
        return n / 2 + n / kernels::kQ4Group * sizeof(std::uint16_t);
      case WeightStorage::placeholder:
        return 0;
    }
    return 0;
  }

  /// The Scalar matrix (native storage only).
  Matrix<Scalar>& native() {
    check_native();
    return native_;
  }
  const Matrix<Scalar>& native() const {
    check_native();
    return native_;
  }

  /// W quantised to `format` (int8_rows or q4_g32, math §16.1, §16.2), row by
  /// row from `source` in any storage: only one decoded row exists at a time,
  /// never a float copy of the whole matrix. q4_g32 needs cols % 32 == 0.
  /// Throws on a non-finite weight (its scale would be meaningless).
  static WeightMatrix quantized(const WeightMatrix& source, WeightStorage format);

  /// W quantised to `format` from rows handed out one at a time:
  /// row(r, out) writes row r's `cols` weights as float to out. The same
  /// values as quantized() of the whole matrix; for loaders that quantise
  /// straight from a file. `where` heads the errors (a non-finite weight).
  template <typename RowFn>
  static WeightMatrix quantized_rows(WeightStorage format, Index rows, Index cols, RowFn&& row,
                                     const char* where);

  /// A rows x cols matrix of zeros in `format` (values and scales 0), for a
  /// model built in its quantised storage from the start and then filled
  /// matrix by matrix (its matrices replaced), so that it never exists in
  /// float: see LargeModel's `storage` argument.
  static WeightMatrix quantized_zeros(WeightStorage format, Index rows, Index cols) {
    Buffers buffers;
    return allocate_quantized(format, rows, cols, buffers, "WeightMatrix::quantized_zeros");
  }

  /// A view of int8_rows weights stored elsewhere (e.g. a memory-mapped
  /// checkpoint, math §16.4): `values` holds rows x cols bytes and
  /// `row_scales` one float per row, laid out as quantized_values() /
  /// row_scales() describe; `keep_alive` owns that memory for as long as the
  /// view lives.
  static WeightMatrix int8_view(const std::uint8_t* values, const float* row_scales, Index rows,
                                Index cols, std::shared_ptr<const void> keep_alive) {
    WeightMatrix w = view_of(WeightStorage::int8_rows, values, row_scales != nullptr, rows, cols,
                             std::move(keep_alive), "WeightMatrix::int8_view");
    w.row_scales_ = row_scales;
    return w;
  }
  /// The same for q4_g32 weights: rows x cols / 2 bytes of values and
  /// rows x cols / 32 bfloat16 scales (their bits), as quantized_values() /
  /// group_scales() describe.
  static WeightMatrix q4_view(const std::uint8_t* values, const std::uint16_t* group_scales,
                              Index rows, Index cols, std::shared_ptr<const void> keep_alive) {
    WeightMatrix w = view_of(WeightStorage::q4_g32, values, group_scales != nullptr, rows, cols,
                             std::move(keep_alive), "WeightMatrix::q4_view");
    w.group_scales_ = group_scales;
    return w;
  }

  /// Bytes of the quantised values of a rows x cols matrix in `format`.
  static std::size_t quantized_value_bytes(WeightStorage format, Index rows, Index cols) {
    return std::size_t(rows) * std::size_t(format == WeightStorage::q4_g32 ? cols / 2 : cols);
  }
  /// Scales of a rows x cols matrix in `format`: one float per row
  /// (int8_rows) or one bfloat16 per group of 32 inputs (q4_g32).
  static std::size_t quantized_scale_count(WeightStorage format, Index rows, Index cols) {
    return std::size_t(rows) *
           std::size_t(format == WeightStorage::q4_g32 ? cols / kernels::kQ4Group : 1);
  }
  /// Bytes of one scale of `format`: 4 (float, int8_rows) or 2 (bfloat16, q4_g32).
  static std::size_t quantized_scale_size(WeightStorage format) {
    return format == WeightStorage::q4_g32 ? sizeof(std::uint16_t) : sizeof(float);
  }
  /// Throws unless `format` is a quantised format a rows x cols matrix can
  /// have (q4_g32: cols a multiple of the group size).
  static void check_quantized_shape(WeightStorage format, Index rows, Index cols,
                                    const char* where) {
    check(format == WeightStorage::int8_rows || format == WeightStorage::q4_g32, where,
          ": the format must be int8_rows or q4_g32, got ", storage_name(format));
    check(rows >= 0 && cols >= 0, where, ": expected a size >= 0, got ", rows, " x ", cols);
    check(format != WeightStorage::q4_g32 || cols % kernels::kQ4Group == 0, where,
          ": q4_g32 needs the input dimension (cols) to be a multiple of its group size ",
          kernels::kQ4Group, ", got ", cols);
  }

  /// The raw quantised values (int8: rows x cols bytes; q4_g32: rows x cols/2
  /// bytes, low nibble = even column); null unless quantised.
  const std::uint8_t* quantized_values() const { return quant_; }
  /// int8_rows' scales, one float per row (null for other storage).
  const float* row_scales() const { return row_scales_; }
  /// q4_g32's scales, rows x cols/32 bfloat16 bits, row-major (null for
  /// other storage).
  const std::uint16_t* group_scales() const { return group_scales_; }
  /// The scales' bytes of either quantised format (null for other storage).
  const void* quantized_scales() const {
    return storage_ == WeightStorage::q4_g32 ? static_cast<const void*>(group_scales_)
                                             : static_cast<const void*>(row_scales_);
  }

  /// Rows [start, start + count) as a matrix of its own (a view for 16-bit
  /// and quantised storage, a copy for native storage).
  WeightMatrix row_range(Index start, Index count) const {
    check(start >= 0 && count >= 0 && start + count <= rows_, "WeightMatrix::row_range: rows [",
          start, ", ", start + count, ") out of [0, ", rows_, ")");
    if (is_placeholder()) return placeholder(count, cols_);
    if (is_native()) return WeightMatrix(Matrix<Scalar>(native_.middleRows(start, count)));
    if (is_half()) {
      return half_view(storage_, half_ + start * cols_, count, cols_, keep_alive_);  // a view
    }
    WeightMatrix w;  // a view sharing the quantised buffers
    w.storage_ = storage_;
    w.rows_ = count;
    w.cols_ = cols_;
    w.quant_ = quant_ + start * value_bytes_per_row();
    if (row_scales_) w.row_scales_ = row_scales_ + start;
    if (group_scales_) w.group_scales_ = group_scales_ + start * scales_per_row();
    w.keep_alive_ = keep_alive_;
    return w;
  }

  /// out = row r of W, decoded.
  template <typename Out>
  void copy_row(Index r, Out&& out) const {
    if (is_native()) {
      out = native_.row(r);
      return;
    }
    for (Index c = 0; c < cols_; ++c) out(c) = Scalar(at(r, c));
  }

  /// out = W[r0 : r0 + out.rows(), c0 : c0 + out.cols()], decoded (e.g. a
  /// panel of 16-bit weights for a product with W itself rather than W^T).
  template <typename Out>
  void copy_block(Index r0, Index c0, Out&& out) const {
    if (is_native()) {
      out = native_.block(r0, c0, out.rows(), out.cols());
      return;
    }
    for (Index r = 0; r < out.rows(); ++r) {
      for (Index c = 0; c < out.cols(); ++c) out(r, c) = Scalar(at(r0 + r, c0 + c));
    }
  }

  /// y = x W^T, or y += x W^T with `accumulate`. x: N x cols, y: N x rows.
  /// The `step` workload never allocates (core/kernels/).
  void multiply_transposed(const ConstMatrixRef<Scalar>& x, MatrixRef<Scalar> y,
                           bool accumulate = false, Workload workload = Workload::sequence) const;

 private:
  void check_native() const {
    check_has_weights("WeightMatrix::native");
    check(is_native(), "WeightMatrix::native: the weights are stored as ", storage_name(storage_),
          is_half() ? " (16-bit floats)" : " (quantised)", ", not as Scalar values");
  }

  /// Throws for a placeholder: its weights were never put in.
  void check_has_weights(const char* where) const {
    check(!is_placeholder(), where, ": the ", rows_, " x ", cols_,
          " matrix is a placeholder (a model being loaded) and has no weights yet");
  }

  /// W(r, c) decoded, for any storage but native (the slow path: copies, tails).
  float at(Index r, Index c) const {
    switch (storage_) {
      case WeightStorage::bf16:
        return bf16_to_float(half_[r * cols_ + c]);
      case WeightStorage::f16:
        return f16_to_float(half_[r * cols_ + c]);
      case WeightStorage::int8_rows:
        return kernels::Int8Rows{quant_, row_scales_, cols_}.dequantized(r, c);
      case WeightStorage::q4_g32:
        return kernels::Q4Rows{quant_, group_scales_, cols_}.at(r, c);
      case WeightStorage::placeholder:
        check_has_weights("WeightMatrix");
        return 0.0f;
      default:
        return float(native_(r, c));
    }
  }

  Index value_bytes_per_row() const {
    return storage_ == WeightStorage::q4_g32 ? cols_ / 2 : cols_;
  }
  Index scales_per_row() const {
    return storage_ == WeightStorage::q4_g32 ? cols_ / kernels::kQ4Group : 1;
  }

  /// A view's common part: the shape's and the pointers' checks.
  static WeightMatrix view_of(WeightStorage format, const std::uint8_t* values, bool has_scales,
                              Index rows, Index cols, std::shared_ptr<const void> keep_alive,
                              const char* where) {
    check_quantized_shape(format, rows, cols, where);
    check((values && has_scales) || rows * cols == 0, where,
          ": the values and the scales must not be null");
    WeightMatrix w;
    w.storage_ = format;
    w.rows_ = rows;
    w.cols_ = cols;
    w.quant_ = values;
    w.keep_alive_ = std::move(keep_alive);
    return w;
  }

  /// Where allocate_quantized's caller writes: the values and the scales of
  /// the format (the other scale pointer stays null).
  struct Buffers {
    std::uint8_t* values = nullptr;
    float* row_scales = nullptr;
    std::uint16_t* group_scales = nullptr;
  };

  /// Zeroed, aligned storage for a rows x cols matrix in `format`, owned by
  /// the returned matrix; `buffers` point into it for writing.
  static WeightMatrix allocate_quantized(WeightStorage format, Index rows, Index cols,
                                         Buffers& buffers, const char* where) {
    check_quantized_shape(format, rows, cols, where);
    // One owner for the buffers; Eigen's allocator aligns them like
    // half_zeros (the kernels load 8 or 16 bytes of values at a time).
    struct Owner {
      Eigen::Matrix<std::uint8_t, Eigen::Dynamic, 1> values;
      Eigen::Matrix<float, Eigen::Dynamic, 1> row_scales;
      Eigen::Matrix<std::uint16_t, Eigen::Dynamic, 1> group_scales;
    };
    auto owner = std::make_shared<Owner>();
    WeightMatrix w;
    w.storage_ = format;
    w.rows_ = rows;
    w.cols_ = cols;
    owner->values.setZero(rows * w.value_bytes_per_row());
    buffers.values = owner->values.data();
    w.quant_ = buffers.values;
    if (format == WeightStorage::q4_g32) {
      owner->group_scales.setZero(rows * w.scales_per_row());
      buffers.group_scales = owner->group_scales.data();
      w.group_scales_ = buffers.group_scales;
    } else {
      owner->row_scales.setZero(rows);
      buffers.row_scales = owner->row_scales.data();
      w.row_scales_ = buffers.row_scales;
    }
    w.keep_alive_ = std::move(owner);
    return w;
  }

  WeightStorage storage_ = WeightStorage::native;
  Index rows_ = 0, cols_ = 0;
  Matrix<Scalar> native_;
  const std::uint16_t* half_ = nullptr;
  /// Quantised storage: the values and the scales of the format (math §16).
  const std::uint8_t* quant_ = nullptr;
  const float* row_scales_ = nullptr;            // int8_rows
  const std::uint16_t* group_scales_ = nullptr;  // q4_g32: bfloat16 bits
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
  check_has_weights("WeightMatrix::multiply_transposed");
  if (is_native()) {
    matmul_transposed<Scalar>(x, native_, y, accumulate, workload);
    return;
  }
  if (storage_ == WeightStorage::int8_rows) {
    kernels::int8_product<Scalar>(x, quant_, row_scales_, rows_, cols_, y, accumulate, workload);
    return;
  }
  if (storage_ == WeightStorage::q4_g32) {
    kernels::q4_product<Scalar>(x, quant_, group_scales_, rows_, cols_, y, accumulate, workload);
    return;
  }
  kernels::half_product<Scalar>(x, half_, rows_, cols_, storage_ == WeightStorage::bf16, y,
                                accumulate, workload);
}

template <typename Scalar_>
WeightMatrix<Scalar_> WeightMatrix<Scalar_>::quantized(const WeightMatrix& source,
                                                       WeightStorage format) {
  check(format == WeightStorage::int8_rows || format == WeightStorage::q4_g32,
        "WeightMatrix::quantized: argument 'format' must be int8_rows or q4_g32, got ",
        storage_name(format));
  check(format != WeightStorage::q4_g32 || source.cols() % kernels::kQ4Group == 0,
        "WeightMatrix::quantized: argument 'source' must have ", "cols a multiple of ",
        kernels::kQ4Group, " for q4_g32, got cols = ", source.cols());
  return quantized_rows(
      format, source.rows(), source.cols(),
      [&](Index r, float* out) {
        if (source.is_native()) {
          for (Index c = 0; c < source.cols(); ++c) out[c] = float(source.native_(r, c));
        } else {
          for (Index c = 0; c < source.cols(); ++c) out[c] = source.at(r, c);
        }
      },
      "WeightMatrix::quantized");
}

template <typename Scalar_>
template <typename RowFn>
WeightMatrix<Scalar_> WeightMatrix<Scalar_>::quantized_rows(WeightStorage format, Index rows,
                                                            Index cols, RowFn&& row,
                                                            const char* where) {
  Buffers all;
  WeightMatrix w = allocate_quantized(format, rows, cols, all, where);
  Vector<float> decoded(cols);  // the one decoded row
  for (Index r = 0; r < rows; ++r) {
    row(r, decoded.data());
    check(decoded.allFinite(), where, ": row ", r,
          " has a non-finite weight (or one beyond float's range)");
    std::uint8_t* values = all.values + r * w.value_bytes_per_row();
    if (format == WeightStorage::q4_g32) {
      std::uint16_t* scales = all.group_scales + r * w.scales_per_row();
      for (Index g = 0; g < cols / kernels::kQ4Group; ++g) {
        kernels::quantize_q4_group(decoded.data() + g * kernels::kQ4Group,
                                   values + g * kernels::kQ4Group / 2, scales[g]);
      }
    } else {
      kernels::quantize_int8_row(decoded.data(), cols, reinterpret_cast<std::int8_t*>(values),
                                 all.row_scales[r]);
    }
  }
  return w;
}

}  // namespace xlstm
