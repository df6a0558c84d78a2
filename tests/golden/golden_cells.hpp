// Golden runners for the cell kinds: slstm_cell, mlstm_cell (golden README §5.1, §5.2) and
// slstm_cell_grad (golden README §11.1).
#pragma once

#include "golden/golden_case.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/cells/slstm_backward.hpp"
#include "xlstm/io/checkpoint.hpp"

namespace golden {

/// Reads the (B, H) tensors `<prefix>y`, `c` and, unless the cell runs
/// function lstm, `n`, `m` into `state`, if the file has them.
template <typename Scalar>
void read_slstm_state(const GoldenCase& g, const std::string& prefix, bool lstm,
                      xlstm::SLstmState<Scalar>& state) {
  if (!g.has(prefix + "y")) return;
  auto read = [&](const char* name, xlstm::Matrix<Scalar>& dst) {
    g.file().read_into<Scalar>(prefix + name, dst.data(), std::size_t(dst.size()));
  };
  read("y", state.y);
  read("c", state.c);
  if (!lstm) {
    read("n", state.n);
    read("m", state.m);
  }
}

/// What a slstm_cell or slstm_cell_grad file holds for the forward: the cell
/// with its parameters, the pre-activations and the initial state.
template <typename Scalar>
struct SLstmCellCase {
  xlstm::SLstmCell<Scalar> cell;
  bool lstm;
  Sequence<Scalar> x;
  xlstm::SLstmState<Scalar> state;
};

template <typename Scalar>
SLstmCellCase<Scalar> slstm_cell_case(const GoldenCase& g) {
  xlstm::SLstmCellConfig config;
  config.hidden_size = g.config().at("hidden_size").get<Index>();
  config.num_heads = g.config().at("num_heads").get<Index>();
  config.function = xlstm::parse_slstm_function(g.config().at("function").get<std::string>());
  xlstm::SLstmCell<Scalar> cell(config);
  xlstm::io::load_module(cell, g.file(), {"param."});
  const bool lstm = config.function == xlstm::SLstmFunction::lstm;
  auto x = g.sequence<Scalar>("input.x");
  auto state = cell.initial_state(x.batch());
  read_slstm_state(g, "state_in.", lstm, state);
  return {std::move(cell), lstm, std::move(x), std::move(state)};
}

/// Compares `state` with the (B, H) tensors `<prefix>y`, `c` and, unless
/// `lstm`, `n`, `m`.
template <typename Scalar>
void compare_slstm_state(GoldenCase& g, const std::string& prefix, bool lstm,
                         const xlstm::SLstmState<Scalar>& state) {
  g.compare(prefix + "y", GoldenCase::to_double(state.y));
  g.compare(prefix + "c", GoldenCase::to_double(state.c));
  if (!lstm) {
    g.compare(prefix + "n", GoldenCase::to_double(state.n));
    g.compare(prefix + "m", GoldenCase::to_double(state.m));
  }
}

template <typename Scalar>
void run_slstm_cell(GoldenCase& g) {
  auto [cell, lstm, x, state] = slstm_cell_case<Scalar>(g);
  xlstm::Sequence<Scalar> y;
  xlstm::SLstmTrace<Scalar> trace;
  cell.forward(x, state, y, &trace);

  g.compare_heads("output.y", y);
  g.compare("output.c_all", trace.c);
  if (!lstm) {
    g.compare("output.n_all", trace.n);
    g.compare("output.m_all", trace.m);
  }
  compare_slstm_state(g, "state_out.", lstm, state);
}

/// slstm_cell_grad (golden README §11.1): the forward, then the backward with
/// the file's cotangents; every grad.* tensor is compared.
template <typename Scalar>
void run_slstm_cell_grad(GoldenCase& g) {
  auto [cell, lstm, x, state] = slstm_cell_case<Scalar>(g);
  xlstm::Sequence<Scalar> y;
  xlstm::SLstmTape<Scalar> tape;
  cell.forward(x, state, y, tape);
  g.compare_heads("output.y", y);
  compare_slstm_state(g, "state_out.", lstm, state);

  // Cotangents: the output's, and the final state's where the file has them.
  const auto grad_y = g.heads_sequence<Scalar>("input.grad_output.y");
  auto grad_state = cell.initial_state(x.batch());
  read_slstm_state(g, "input.grad_state_out.", lstm, grad_state);
  xlstm::SLstmCellGradients<Scalar> grads(cell);
  xlstm::Sequence<Scalar> grad_x;
  xlstm::backward(cell, tape, grad_y, grad_state, grads, grad_x);

  g.compare("grad.param._recurrent_kernel_", GoldenCase::to_double(grads.recurrent_kernel()));
  g.compare("grad.param._bias_", GoldenCase::to_double(grads.bias()));
  g.compare("grad.input.x", grad_x);
  if (g.has("grad.state_in.y")) compare_slstm_state(g, "grad.state_in.", lstm, grad_state);
}

template <typename Scalar>
void run_mlstm_cell(GoldenCase& g) {
  const auto q = g.heads_sequence<Scalar>("input.q");
  const auto k = g.heads_sequence<Scalar>("input.k");
  const auto v = g.heads_sequence<Scalar>("input.v");
  const auto igate = g.heads_sequence<Scalar>("input.igate_preact");
  const auto fgate = g.heads_sequence<Scalar>("input.fgate_preact");
  const Index num_heads = Index(g.shape("input.q")[1]);

  xlstm::MLstmCellConfig config;
  config.num_heads = num_heads;
  config.qk_head_dim = q.features() / num_heads;
  config.v_head_dim = v.features() / num_heads;
  config.convention = xlstm::MLstmStateConvention::scaled_keys;  // [X] recurrent step
  const std::string chunk = g.meta("chunk_size");
  if (!chunk.empty()) config.chunk_size = std::stoi(chunk);
  xlstm::MLstmCell<Scalar> cell(config);

  xlstm::Sequence<Scalar> h;
  auto state = cell.initial_state(q.batch());
  cell.forward(q, k, v, igate, fgate, state, h, xlstm::MLstmForm::parallel);
  g.compare_heads("output.h_parallel", h);

  state = cell.initial_state(q.batch());
  cell.forward(q, k, v, igate, fgate, state, h, xlstm::MLstmForm::recurrent);
  g.compare_heads("output.h_recurrent", h);
  g.compare("state_out.c", GoldenCase::to_double(state.C));
  g.compare("state_out.n", GoldenCase::to_double(state.n));
  g.compare("state_out.m", GoldenCase::to_double(state.m));

  if (g.has("output.h_chunkwise")) {
    state = cell.initial_state(q.batch());
    cell.forward(q, k, v, igate, fgate, state, h, xlstm::MLstmForm::chunkwise);
    g.compare_heads("output.h_chunkwise", h);
  }
}

}  // namespace golden
