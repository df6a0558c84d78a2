// Scratch: per-call working memory that travels with a state without being
// part of it.
//
// `step` must not allocate, so the buffers it writes into live beside the
// recurrent state the caller owns. They are not state: copying a state gives
// the copy empty scratch (sized again on its first step), and comparing,
// saving or copying rows never looks at it. Scratch is filled only through
// `get()`, which a const module may call on the caller's state.
#pragma once

#include <utility>

namespace xlstm {

template <typename Buffers>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(Buffers buffers) : buffers_(std::move(buffers)) {}
  // Copies start empty: what a state is does not include its scratch.
  Scratch(const Scratch&) {}
  Scratch& operator=(const Scratch&) { return *this; }
  Scratch(Scratch&&) noexcept = default;
  Scratch& operator=(Scratch&&) noexcept = default;
  ~Scratch() = default;

  Buffers& get() { return buffers_; }
  const Buffers& get() const { return buffers_; }

 private:
  Buffers buffers_;
};

/// Resizes `m` to rows x cols unless it has that size already (then nothing
/// is allocated): how a step sizes its scratch on first use.
template <typename MatrixType, typename IndexType>
void ensure_size(MatrixType& m, IndexType rows, IndexType cols) {
  if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
}

}  // namespace xlstm
