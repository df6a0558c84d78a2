// The recurrent state of a block: its causal-conv window and its cell state,
// plus the scratch its `step` writes into (so that step does not allocate;
// not part of the state: see core/scratch.hpp). Both NeurIPS block kinds
// share this shape; only the cell state and the scratch buffers differ.
#pragma once

#include <type_traits>

#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

enum class MLstmStateStorage;  // cells/mlstm.hpp
template <typename Scalar>
struct MLstmState;

/// The input checks every block's forward and step start with: `features`
/// must be the block's embedding_dim and `batch` the state's batch.
inline void check_block_input(Index features, Index batch, Index embedding_dim, Index state_batch,
                              const char* where, const char* name) {
  check(features == embedding_dim, where, ": argument '", name, "' must have ", embedding_dim,
        " features (embedding_dim), got ", features);
  check(batch == state_batch, where, ": argument '", name, "' has batch ", batch,
        " but the state was made for batch ", state_batch);
}

/// The state of MLstmBlock and SLstmBlock (MLstmBlockState, SLstmBlockState):
/// make it with the block's initial_state(batch); copy it, reset or copy
/// rows, save it (io/state_io.hpp). Its scratch is not copied or saved.
template <typename Scalar, typename CellState, typename Workspace>
struct ConvCellState {
  CausalConv1dState<Scalar> conv;  ///< last K conv inputs per row (math §6.3)
  CellState cell;
  Scratch<Workspace> scratch;

  Index batch() const { return conv.batch(); }

  void reset() {
    conv.reset();
    cell.reset();
  }

  /// Resets batch row `row` only; the others continue.
  void reset_row(Index row) {
    check(row >= 0 && row < batch(), "block state reset_row: argument 'row' must be in [0, ",
          batch(), "), got ", row);
    conv.reset_row(row);
    cell.reset_row(row);
  }

  /// Copies batch row `src` of `other` into row `dst` of this state.
  void copy_row_from(const ConvCellState& other, Index src, Index dst) {
    conv.copy_row_from(other.conv, src, dst);
    cell.copy_row_from(other.cell, src, dst);
  }

  /// Converts an mLSTM cell state's C to `storage` (math §4.8); an sLSTM
  /// block's state has no matrix memory and stays as it is.
  void set_mlstm_storage(MLstmStateStorage storage) {
    if constexpr (std::is_same_v<CellState, MLstmState<Scalar>>) cell.set_storage(storage);
  }

  /// The cell's tensors, then `conv_state.0` (the official step-state names).
  XLSTM_STATE_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_tensors(Self& self, Visit& visit, const std::string& prefix) {
    self.cell.for_each_tensor(visit, prefix);
    self.conv.for_each_tensor(visit, prefix);
  }
};

}  // namespace xlstm
