// Tensor aliases and the batch-of-sequences container.
//
// Everything is row-major so that the rows of a matrix are the feature vectors
// of one (batch row, time step) and checkpoint tensors (PyTorch, C order) map
// onto Eigen without a transpose.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "xlstm/core/error.hpp"

namespace xlstm {

using Index = Eigen::Index;

template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
template <typename Scalar>
using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

template <typename Scalar>
using MatrixMap = Eigen::Map<Matrix<Scalar>>;
template <typename Scalar>
using ConstMatrixMap = Eigen::Map<const Matrix<Scalar>>;
template <typename Scalar>
using VectorMap = Eigen::Map<Vector<Scalar>>;
template <typename Scalar>
using ConstVectorMap = Eigen::Map<const Vector<Scalar>>;

/// Writable view of a row-major matrix (or a block of one).
template <typename Scalar>
using MatrixRef = Eigen::Ref<Matrix<Scalar>>;
/// Read-only view of a row-major matrix; pass as `const ConstMatrixRef<S>&`.
template <typename Scalar>
using ConstMatrixRef = Eigen::Ref<const Matrix<Scalar>>;

/// The most elements one tensor may have: its bytes, at 8 per element (the
/// widest Scalar), must fit Index, the type Eigen measures sizes in.
inline constexpr Index kMaxElements = std::numeric_limits<Index>::max() / 8;

/// Throws Error unless the product of the non-negative `sizes` is at most
/// kMaxElements. Called before the product is formed or allocated: an Index
/// product that overflows is undefined behaviour, and Eigen would answer an
/// oversized allocation with std::bad_alloc instead of a message naming the
/// sizes. `names` says what the sizes are, e.g. "'vocab_size' x 'embedding_dim'".
inline void check_size_product(std::initializer_list<Index> sizes, const char* where,
                               const char* names) {
  Index product = 1;
  bool overflow = false, has_zero = false;
  for (Index size : sizes) {
    if (size == 0) has_zero = true;
    if (size <= 0) continue;  // a zero makes the product 0; signs are checked elsewhere
    if (product > kMaxElements / size) overflow = true;
    if (!overflow) product *= size;
  }
  if (!overflow || has_zero) return;
  std::ostringstream values;
  const char* separator = "";
  for (Index size : sizes) {
    values << separator << size;
    separator = " x ";
  }
  fail(where, ": ", names, " = ", values.str(), " is too large: the product exceeds ", kMaxElements,
       " elements, the most one tensor may hold");
}

/// Shape of a tensor as stored in a checkpoint (PyTorch order).
using Shape = std::vector<std::size_t>;

/// "[2, 3]": how errors print a shape.
inline std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

/// A batch of sequences, B x T x D, stored as one (B*T) x D row-major matrix
/// whose row `b*T + t` is the feature vector of batch row b at time t. Keeping
/// all B*T rows in one matrix is what lets every projection be one product.
template <typename Scalar>
class Sequence {
 public:
  Sequence() = default;
  Sequence(Index batch, Index time, Index features) { resize(batch, time, features); }

  /// A sequence of zeros.
  static Sequence zeros(Index batch, Index time, Index features) {
    Sequence s(batch, time, features);
    s.data_.setZero();
    return s;
  }

  void resize(Index batch, Index time, Index features) {
    check(batch >= 0 && time >= 0 && features >= 0, "Sequence: sizes must be non-negative, got ",
          batch, " x ", time, " x ", features);
    check_size_product({batch, time, features}, "Sequence", "batch x time x features");
    batch_ = batch;
    time_ = time;
    data_.resize(batch * time, features);
  }

  Index batch() const { return batch_; }
  Index time() const { return time_; }
  Index features() const { return data_.cols(); }

  /// All B*T rows as one matrix.
  Matrix<Scalar>& matrix() { return data_; }
  const Matrix<Scalar>& matrix() const { return data_; }

  /// The T x D rows of batch row b.
  auto rows_of(Index b) { return data_.middleRows(b * time_, time_); }
  auto rows_of(Index b) const { return data_.middleRows(b * time_, time_); }

  /// The feature vector of batch row b at time t.
  auto at(Index b, Index t) { return data_.row(b * time_ + t); }
  auto at(Index b, Index t) const { return data_.row(b * time_ + t); }

  /// Time step t of every batch row: a B x D view (rows b*T + t), e.g. the
  /// input of a `step`: `block.step(x.time_step(t), state, y_t)`.
  auto time_step(Index t) {
    check(t >= 0 && t < time_, "Sequence::time_step: argument 't' must be in [0, ", time_, "), got ",
          t);
    return StridedMap(data_.data() + t * features(), batch_, features(),
                      Eigen::OuterStride<>(time_ * features()));
  }
  auto time_step(Index t) const {
    check(t >= 0 && t < time_, "Sequence::time_step: argument 't' must be in [0, ", time_, "), got ",
          t);
    return ConstStridedMap(data_.data() + t * features(), batch_, features(),
                           Eigen::OuterStride<>(time_ * features()));
  }

  Scalar& operator()(Index b, Index t, Index d) { return data_(b * time_ + t, d); }
  Scalar operator()(Index b, Index t, Index d) const { return data_(b * time_ + t, d); }

 private:
  using StridedMap = Eigen::Map<Matrix<Scalar>, 0, Eigen::OuterStride<>>;
  using ConstStridedMap = Eigen::Map<const Matrix<Scalar>, 0, Eigen::OuterStride<>>;

  Index batch_ = 0;
  Index time_ = 0;
  Matrix<Scalar> data_;
};

/// Token ids of a batch: B x T, row-major.
using Tokens = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The shape check of a product y = f(x) over N rows: x must be N x `in`
/// and y N x `out` (Linear, HeadwiseLinear, WeightMatrix).
template <typename X, typename Y>
void check_product_shapes(const X& x, const Y& y, Index in, Index out, const char* where) {
  check(x.cols() == in && y.rows() == x.rows() && y.cols() == out, where, ": expected x N x ", in,
        " and y N x ", out, ", got x ", x.rows(), " x ", x.cols(), " and y ", y.rows(), " x ",
        y.cols());
}

/// Sizes a module's output `y` to rows x cols: a Matrix is resized (no
/// allocation when it has the size already), a view (block, Ref, Map) must
/// have the size. So `step` takes its output like `forward` does.
template <typename Out>
void prepare_output(Out& y, Index rows, Index cols, const char* where, const char* name) {
  using Plain = std::decay_t<Out>;
  if constexpr (std::is_base_of_v<Eigen::PlainObjectBase<Plain>, Plain>) {
    if (y.rows() != rows || y.cols() != cols) y.resize(rows, cols);
  } else {
    check(y.rows() == rows && y.cols() == cols, where, ": argument '", name, "' must be ", rows,
          " x ", cols, ", got ", y.rows(), " x ", y.cols());
  }
}

/// Per-row sequence lengths of a ragged batch: row b has `lengths[b]` valid
/// time steps (0 .. T); the positions after them are padding, never read
/// into any state. An empty vector means every row has all T steps.
using Lengths = std::vector<Index>;

/// Valid steps of row b.
inline Index length_of(const Lengths& lengths, Index b, Index time) {
  return lengths.empty() ? time : lengths[std::size_t(b)];
}

/// Checks `lengths` against a batch of `batch` rows and `time` steps.
inline void check_lengths(const Lengths& lengths, Index batch, Index time, const char* where) {
  if (lengths.empty()) return;
  check(Index(lengths.size()) == batch, where,
        ": argument 'lengths' must have one entry per batch "
        "row (",
        batch, "), got ", lengths.size());
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    check(lengths[b] >= 0 && lengths[b] <= time, where, ": lengths[", b, "] must be in [0, ", time,
          "], got ", lengths[b]);
  }
}

/// Sets the padded positions (t >= lengths[b]) of a sequence to zero, which is
/// what every ragged forward returns there.
template <typename Scalar>
void zero_padding(Sequence<Scalar>& s, const Lengths& lengths) {
  if (lengths.empty()) return;
  for (Index b = 0; b < s.batch(); ++b) {
    const Index len = lengths[std::size_t(b)];
    s.rows_of(b).bottomRows(s.time() - len).setZero();
  }
}

}  // namespace xlstm
