// Golden runners for the cell kinds: slstm_cell, mlstm_cell (golden README §5.1, §5.2),
// slstm_cell_grad and mlstm_cell_grad (golden README §11.1, §11.3).
#pragma once

#include "golden/golden_case.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/mlstm_backward.hpp"
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

/// What an mlstm_cell_grad file holds (golden README §11.3): the inputs, the
/// cell, the initial state (zeros without state_in.*) and the cotangents.
template <typename Scalar>
struct MLstmCellGradCase {
  Sequence<Scalar> q, k, v, igate, fgate;
  xlstm::MLstmCell<Scalar> cell;
  xlstm::MLstmState<Scalar> state_in, grad_state_out;
  Sequence<Scalar> grad_h;
  std::string output;  ///< output.h_parallel or output.h_recurrent
};

/// Reads the C, n, m tensors `<prefix>c`, `n`, `m` ((B, NH, DH, DH),
/// (B, NH, DH, 1), (B, NH, 1, 1): the state's own layout) if the file has them.
template <typename Scalar>
void read_mlstm_state(const GoldenCase& g, const std::string& prefix,
                      xlstm::MLstmState<Scalar>& state) {
  if (!g.has(prefix + "c")) return;
  g.file().read_into<Scalar>(prefix + "c", state.C.data(), std::size_t(state.C.size()));
  g.file().read_into<Scalar>(prefix + "n", state.n.data(), std::size_t(state.n.size()));
  g.file().read_into<Scalar>(prefix + "m", state.m.data(), std::size_t(state.m.size()));
}

template <typename Scalar>
MLstmCellGradCase<Scalar> mlstm_cell_grad_case(const GoldenCase& g, const std::string& form) {
  auto q = g.heads_sequence<Scalar>("input.q");
  const Index num_heads = Index(g.shape("input.q")[1]);
  xlstm::MLstmCellConfig config;
  config.num_heads = num_heads;
  config.qk_head_dim = q.features() / num_heads;
  config.v_head_dim = g.heads_sequence<Scalar>("input.v").features() / num_heads;
  config.convention = xlstm::MLstmStateConvention::scaled_keys;  // [X], golden README §11.3
  xlstm::MLstmCell<Scalar> cell(config);
  auto state_in = cell.initial_state(q.batch());
  read_mlstm_state(g, "state_in.", state_in);
  auto grad_state_out = cell.initial_state(q.batch());
  read_mlstm_state(g, "input.grad_state_out.", grad_state_out);
  const std::string output = "output.h_" + form;
  return {std::move(q),
          g.heads_sequence<Scalar>("input.k"),
          g.heads_sequence<Scalar>("input.v"),
          g.heads_sequence<Scalar>("input.igate_preact"),
          g.heads_sequence<Scalar>("input.fgate_preact"),
          std::move(cell),
          std::move(state_in),
          std::move(grad_state_out),
          g.heads_sequence<Scalar>("input.grad_" + output),
          output};
}

/// The forward in `form` (chunk size `chunk`) with a tape, then the backward
/// with the file's cotangents; compares every grad.* tensor, widening atol to
/// `slack` (the file's documented difference between the forms) and, with
/// `outputs`, the forward's outputs and final state.
template <typename Scalar>
void check_mlstm_cell_grad(GoldenCase& g, const MLstmCellGradCase<Scalar>& c, xlstm::MLstmForm form,
                           Index chunk, double slack, bool outputs, const std::string& label) {
  auto config = c.cell.config();
  config.chunk_size = chunk;
  const xlstm::MLstmCell<Scalar> cell(config);
  auto state = c.state_in;
  xlstm::MLstmTape<Scalar> tape;
  Sequence<Scalar> h;
  cell.forward(c.q, c.k, c.v, c.igate, c.fgate, state, h, tape, form);
  if (outputs) {
    g.compare_heads(c.output, h);
    if (g.has("state_out.c")) {
      g.compare("state_out.c", GoldenCase::to_double(state.C));
      g.compare("state_out.n", GoldenCase::to_double(state.n));
      g.compare("state_out.m", GoldenCase::to_double(state.m));
    }
  }
  auto grad_state = c.grad_state_out;
  xlstm::MLstmInputGradients<Scalar> grads;
  xlstm::backward(cell, tape, c.grad_h, grad_state, grads);
  auto compare = [&](const std::string& name, const std::vector<double>& values) {
    g.compare(name, values, slack, label);
  };
  compare("grad.input.q", g.in_heads_layout("grad.input.q", grads.q));
  compare("grad.input.k", g.in_heads_layout("grad.input.k", grads.k));
  compare("grad.input.v", g.in_heads_layout("grad.input.v", grads.v));
  compare("grad.input.igate_preact", g.in_heads_layout("grad.input.igate_preact", grads.igate));
  compare("grad.input.fgate_preact", g.in_heads_layout("grad.input.fgate_preact", grads.fgate));
  if (g.has("grad.state_in.c")) {
    compare("grad.state_in.c", GoldenCase::to_double(grad_state.C));
    compare("grad.state_in.n", GoldenCase::to_double(grad_state.n));
    compare("grad.state_in.m", GoldenCase::to_double(grad_state.m));
  }
}

/// mlstm_cell_grad (golden README §11.3): the file's form at its tolerances,
/// then the other forms against the same gradients: chunkwise at several chunk
/// sizes (1, 3, the file's, T) and, for a parallel file, the recurrent form,
/// with atol widened to the file's max_abs_diff_grad_* between those forms.
template <typename Scalar>
void run_mlstm_cell_grad(GoldenCase& g) {
  const std::string form = g.meta("form");
  ASSERT_TRUE(form == "parallel" || form == "recurrent") << "metadata form '" << form << "'";
  const auto c = mlstm_cell_grad_case<Scalar>(g, form);
  const Index time = c.q.time();
  const std::string chunk_meta = g.meta("chunk_size");
  const Index file_chunk = chunk_meta.empty() ? time : Index(std::stoi(chunk_meta));
  const bool parallel = form == "parallel";
  check_mlstm_cell_grad(g, c, parallel ? xlstm::MLstmForm::parallel : xlstm::MLstmForm::recurrent,
                        file_chunk, 0, true, "");

  auto slack_of = [&](const char* key) {
    const std::string value = g.meta(key);
    return value.empty() ? 0.0 : std::stod(value);
  };
  // Chunkwise computes the recurrent function (math §4.5).
  const double chunk_slack = parallel ? slack_of("max_abs_diff_grad_parallel_vs_recurrent")
                                      : slack_of("max_abs_diff_grad_chunkwise_vs_recurrent");
  std::vector<Index> chunks = {1, 3, file_chunk, time};
  std::sort(chunks.begin(), chunks.end());
  chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
  for (const Index chunk : chunks) {
    check_mlstm_cell_grad(g, c, xlstm::MLstmForm::chunkwise, chunk, chunk_slack, false,
                          "[chunkwise L=" + std::to_string(chunk) + "]");
  }
  if (parallel) {
    check_mlstm_cell_grad(g, c, xlstm::MLstmForm::recurrent, file_chunk,
                          slack_of("max_abs_diff_grad_parallel_vs_recurrent"), false,
                          "[recurrent]");
  }
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
