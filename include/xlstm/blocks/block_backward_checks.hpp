// The argument checks that every block's backward makes before it writes
// anything (design §7.4), written once for the sLSTM and mLSTM blocks.
#pragma once

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {
namespace detail {

/// Throws unless the tape holds a recording (`recorded`) of a block of this
/// width (`x`, the tape's copy of the input), `grad_y` has the forward's
/// shape, `grad_x` is another sequence, and `grad_state` is a state of the
/// forward's batch (checked with `where_grad_state` as the message's start).
template <typename Block, typename State>
void check_block_backward(const char* where, const char* where_grad_state, const Block& block,
                          bool recorded, const Sequence<typename Block::Scalar>& x,
                          const Sequence<typename Block::Scalar>& grad_y, const State& grad_state,
                          const Sequence<typename Block::Scalar>& grad_x) {
  check_tape_recorded(recorded, where);
  const Index batch = x.batch(), time = x.time(), e = block.embedding_dim();
  check(x.features() == e, where, ": argument 'tape' was recorded by a block of width ",
        x.features(), ", this block has ", e);
  check(grad_y.batch() == batch && grad_y.time() == time && grad_y.features() == e, where,
        ": argument 'grad_y' must be ", batch, " x ", time, " x ", e,
        " (the forward's batch x time x embedding_dim), got ", grad_y.batch(), " x ", grad_y.time(),
        " x ", grad_y.features());
  check(&grad_y != &grad_x, where, ": arguments 'grad_y' and 'grad_x' must be different sequences");
  block.check_state(grad_state, batch, where_grad_state);
}

}  // namespace detail
}  // namespace xlstm
