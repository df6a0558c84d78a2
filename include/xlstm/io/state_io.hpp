// Saving and restoring recurrent states as safetensors, with the names of the
// official step() state dicts (FORMAT.md §5.7), so a state can be compared with
// or handed to the PyTorch package:
//
//   block_<i>.mlstm_state.0   C  (B, NH, DH, DH)   scaled-keys convention
//   block_<i>.mlstm_state.1   n  (B, NH, DH, 1)
//   block_<i>.mlstm_state.2   m  (B, NH, 1, 1)
//   block_<i>.conv_state.0       (B, K, F)          last K conv inputs, oldest first
//   block_<i>.slstm_state        (4, B, H)          [y, c, n, m]  ((2, B, H) [y, c] for lstm)
//
// (no conv_state for an sLSTM block with kernel size 0). Restoring checks every
// name and shape against the state it fills and writes nothing on error.
#pragma once

#include <string>
#include <vector>

#include "xlstm/core/parameters.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/model/language_model.hpp"

namespace xlstm::io {

namespace detail {

template <typename Scalar>
void collect_conv_state(CausalConv1dState<Scalar>& s, const std::string& prefix,
                        ParameterList<Scalar>& list) {
  if (s.kernel_size == 0) return;
  add_parameter(list, prefix, "conv_state.0",
                {std::size_t(s.batch()), std::size_t(s.kernel_size), std::size_t(s.window.cols())},
                s.window);
}

template <typename Scalar>
void collect_mlstm_block_state(MLstmBlockState<Scalar>& s, const std::string& prefix,
                               ParameterList<Scalar>& list) {
  const auto b = std::size_t(s.cell.batch), nh = std::size_t(s.cell.num_heads),
             dk = std::size_t(s.cell.qk_head_dim), dv = std::size_t(s.cell.v_head_dim);
  add_parameter(list, prefix, "mlstm_state.0", {b, nh, dk, dv}, s.cell.C);
  add_parameter(list, prefix, "mlstm_state.1", {b, nh, dk, 1}, s.cell.n);
  add_parameter(list, prefix, "mlstm_state.2", {b, nh, 1, 1}, s.cell.m);
  collect_conv_state(s.conv, prefix, list);
}

}  // namespace detail

/// Adds a stack state's tensors to `writer` under `prefix` (e.g. "" or "state.").
template <typename Scalar>
void add_state(SafetensorsWriter& writer, const BlockStackState<Scalar>& state,
               const std::string& prefix = "") {
  for (std::size_t i = 0; i < state.blocks.size(); ++i) {
    const std::string p = prefix + "block_" + std::to_string(i) + ".";
    std::visit(
        [&](const auto& s) {
          using S = std::decay_t<decltype(s)>;
          if constexpr (std::is_same_v<S, MLstmBlockState<Scalar>>) {
            ParameterList<Scalar> list;
            // collect only hands out pointers; nothing is modified.
            detail::collect_mlstm_block_state(const_cast<S&>(s), p, list);
            for (const auto& t : list) writer.add(t.name, t.shape, t.data);
          } else {
            // [y, c, n, m] stacked; for function "lstm" n and m stay zero.
            const auto& cell = s.cell;
            const Index b = cell.batch(), h = cell.hidden_size();
            Matrix<Scalar> stacked(4 * b, h);
            stacked << cell.y, cell.c, cell.n, cell.m;
            writer.add(p + "slstm_state", {4, std::size_t(b), std::size_t(h)}, stacked.data());
            if (s.conv.kernel_size > 0) {
              writer.add(p + "conv_state.0",
                         {std::size_t(b), std::size_t(s.conv.kernel_size), std::size_t(h)},
                         s.conv.window.data());
            }
          }
        },
        state.blocks[i]);
  }
}

template <typename Scalar>
void save_state(const BlockStackState<Scalar>& state, const std::string& path) {
  SafetensorsWriter writer;
  add_state(writer, state);
  writer.save(path);
}

template <typename Scalar>
void save_state(const LanguageModelState<Scalar>& state, const std::string& path) {
  save_state(state.stack, path);
}

/// Restores a stack state from `file` (names under `prefix`). `state` must
/// already have the right structure (make it with initial_state(batch)); on
/// any mismatch an Error lists the problems and `state` is unchanged.
template <typename Scalar>
void load_state(BlockStackState<Scalar>& state, const SafetensorsFile& file,
                const std::string& prefix = "") {
  ParameterList<Scalar> list;
  std::vector<Matrix<Scalar>> slstm_stacked(state.blocks.size());
  for (std::size_t i = 0; i < state.blocks.size(); ++i) {
    const std::string p = "block_" + std::to_string(i) + ".";
    std::visit(
        [&](auto& s) {
          using S = std::decay_t<decltype(s)>;
          if constexpr (std::is_same_v<S, MLstmBlockState<Scalar>>) {
            detail::collect_mlstm_block_state(s, p, list);
          } else {
            const Index b = s.cell.batch(), h = s.cell.hidden_size();
            slstm_stacked[i].resize(4 * b, h);
            add_parameter(list, p, "slstm_state", {4, std::size_t(b), std::size_t(h)},
                          slstm_stacked[i]);
            detail::collect_conv_state(s.conv, p, list);
          }
        },
        state.blocks[i]);
  }
  // The conv windows and mLSTM tensors are written in place only after every
  // tensor matched (load_parameters stages first); the stacked sLSTM buffers
  // are copied into the cell states afterwards.
  LoadOptions options;
  options.prefix = prefix;
  load_parameters(list, file, options);
  for (std::size_t i = 0; i < state.blocks.size(); ++i) {
    if (auto* s = std::get_if<SLstmBlockState<Scalar>>(&state.blocks[i])) {
      const Index b = s->cell.batch();
      s->cell.y = slstm_stacked[i].middleRows(0, b);
      s->cell.c = slstm_stacked[i].middleRows(b, b);
      s->cell.n = slstm_stacked[i].middleRows(2 * b, b);
      s->cell.m = slstm_stacked[i].middleRows(3 * b, b);
    }
  }
}

template <typename Scalar>
void load_state(LanguageModelState<Scalar>& state, const std::string& path) {
  load_state(state.stack, SafetensorsFile::open(path));
}

}  // namespace xlstm::io
