// The calls that every sequence module (MLstmBlock, SLstmBlock, LargeBlock,
// BlockStack) offers in the same way, written once: forward without lengths,
// the input checks, and `step`'s checks and output sizing before the module's
// own step_into. A CRTP base (the module passes itself as `Derived`), so the
// calls stay direct and `step` still allocates nothing.
#pragma once

#include <utility>

#include "xlstm/blocks/block_state.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

/// Derived supplies: `static constexpr const char* kStepWhere` (its name in
/// step's messages, e.g. "MLstmBlock::step"), `embedding_dim()`,
/// `check_state(state, batch, where)`, the ragged
/// `forward(x, lengths, state, y)` (public; bring this base's `forward` in
/// with a using-declaration) and a `step_into(x_t, state, y_t)` that may be
/// private (befriend this base).
template <typename Derived, typename Scalar, typename State>
class SequenceModule {
 public:
  /// x, y: B x T x E. `state` is the initial state and becomes the final one.
  void forward(const Sequence<Scalar>& x, State& state, Sequence<Scalar>& y) const {
    derived().forward(x, Lengths{}, state, y);
  }

  /// One step: x_t and y_t are B x E (y_t must not alias x_t; a Matrix is
  /// resized, a view must have the size). Checks everything before writing,
  /// so a call that throws leaves the state as it was. Does not allocate once
  /// the state's scratch has its size (from initial_state, or after the first
  /// step).
  template <typename Out>
  void step(const ConstMatrixRef<Scalar>& x_t, State& state, Out&& y_out) const {
    const char* where = Derived::kStepWhere;
    check_input(x_t.cols(), x_t.rows(), state, where, "x_t");
    derived().check_state(state, x_t.rows(), where);
    prepare_output(y_out, x_t.rows(), derived().embedding_dim(), where, "y_t");
    derived().step_into(x_t, state, y_out);
  }

 protected:
  /// `features` must be the module's embedding_dim and `batch` the state's.
  void check_input(Index features, Index batch, const State& state, const char* where,
                   const char* name) const {
    check_block_input(features, batch, derived().embedding_dim(), state.batch(), where, name);
  }

  /// The checks of a sequence forward, before anything is written: `x`
  /// against the module and the state, the lengths, at least one step.
  void check_forward(const Sequence<Scalar>& x, const Lengths& lengths, const State& state,
                     const char* where) const {
    check_input(x.features(), x.batch(), state, where, "x");
    derived().check_state(state, x.batch(), where);
    check_lengths(lengths, x.batch(), x.time(), where);
    check(x.time() > 0, where, ": argument 'x' must have at least one time step");
  }

 private:
  const Derived& derived() const { return static_cast<const Derived&>(*this); }
};

}  // namespace xlstm
