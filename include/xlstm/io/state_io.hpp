// Saving and restoring recurrent states as safetensors, with the names of the
// official step() state dicts (tests/data/golden/README.md §5.7), so a state
// can be compared with or handed to the PyTorch package:
//
//   block_<i>.mlstm_state.0   C  (B, NH, DH, DH)   (NeurIPS: scaled keys; Large: unscaled)
//   block_<i>.mlstm_state.1   n  (B, NH, DH, 1)
//   block_<i>.mlstm_state.2   m  (B, NH, 1, 1)
//   block_<i>.conv_state.0       (B, K, F)          last K conv inputs, oldest first
//   block_<i>.slstm_state        (4, B, H)          [y, c, n, m]
//
// (no conv_state for an sLSTM block with kernel size 0). Every state type
// lists these tensors itself (`for_each_tensor`); this file only moves them
// through the checkpoint engine (io/checkpoint.hpp), so restoring checks
// every name and shape against the state it fills and writes nothing on
// error. Scratch is never saved.
#pragma once

#include <string>

#include "xlstm/core/parameters.hpp"
#include "xlstm/io/checkpoint.hpp"

namespace xlstm::io {

namespace detail {

template <typename Scalar, typename State>
ParameterList<Scalar> state_refs(State& state) {
  ParameterList<Scalar> list;
  state.for_each_tensor([&](const ParameterRef<Scalar>& r) { list.push_back(r); });
  return list;
}
template <typename Scalar, typename State>
ConstParameterList<Scalar> state_refs(const State& state, const std::string& prefix) {
  ConstParameterList<Scalar> list;
  state.for_each_tensor([&](const ConstParameterRef<Scalar>& r) { list.push_back(r); }, prefix);
  return list;
}

}  // namespace detail

/// Adds a state's tensors to `writer` under `prefix` (e.g. "" or "state.").
/// `State` is any state type: BlockStackState, LanguageModelState,
/// LargeModelState, a block's or a cell's state.
template <typename Scalar, template <typename> class State>
void add_state(SafetensorsWriter& writer, const State<Scalar>& state,
               const std::string& prefix = "") {
  add_targets(writer, tensor_targets(detail::state_refs<Scalar>(state, prefix)));
}

template <typename Scalar, template <typename> class State>
void save_state(const State<Scalar>& state, const std::string& path) {
  SafetensorsWriter writer;
  add_state(writer, state);
  writer.save(path);
}

/// Restores a state from `file` (names under `prefix`). `state` must already
/// have the right structure (make it with initial_state(batch)); on any
/// mismatch an Error lists the problems and `state` is unchanged.
template <typename Scalar, template <typename> class State>
void load_state(State<Scalar>& state, const SafetensorsFile& file, const std::string& prefix = "") {
  LoadOptions options;
  options.prefix = prefix;
  load_targets(tensor_targets(detail::state_refs<Scalar>(state)), CheckpointFiles::from_file(file),
               options, file.name() + ": state file does not match the state");
}

template <typename Scalar, template <typename> class State>
void load_state(State<Scalar>& state, const std::string& path) {
  load_state(state, SafetensorsFile::open(path));
}

}  // namespace xlstm::io
