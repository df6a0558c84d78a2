// Golden runners for the cell kinds: slstm_cell and mlstm_cell (golden README §5.1, §5.2).
#pragma once

#include "golden/golden_case.hpp"
#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/io/checkpoint.hpp"

namespace golden {

template <typename Scalar>
void run_slstm_cell(GoldenCase& g) {
  xlstm::SLstmCellConfig config;
  config.hidden_size = g.config().at("hidden_size").get<Index>();
  config.num_heads = g.config().at("num_heads").get<Index>();
  config.function = xlstm::parse_slstm_function(g.config().at("function").get<std::string>());
  xlstm::SLstmCell<Scalar> cell(config);
  xlstm::io::load_module(cell, g.file(), {"param."});

  const auto x = g.sequence<Scalar>("input.x");
  auto state = cell.initial_state(x.batch());
  const bool lstm = config.function == xlstm::SLstmFunction::lstm;
  if (g.has("state_in.y")) {
    auto load = [&](const char* name, xlstm::Matrix<Scalar>& dst) {
      g.file().read_into<Scalar>(name, dst.data(), std::size_t(dst.size()));
    };
    load("state_in.y", state.y);
    load("state_in.c", state.c);
    if (!lstm) {
      load("state_in.n", state.n);
      load("state_in.m", state.m);
    }
  }
  xlstm::Sequence<Scalar> y;
  xlstm::SLstmTrace<Scalar> trace;
  cell.forward(x, state, y, &trace);

  g.compare_heads("output.y", y);
  g.compare("output.c_all", trace.c);
  g.compare("state_out.y", GoldenCase::to_double(state.y));
  g.compare("state_out.c", GoldenCase::to_double(state.c));
  if (!lstm) {
    g.compare("output.n_all", trace.n);
    g.compare("output.m_all", trace.m);
    g.compare("state_out.n", GoldenCase::to_double(state.n));
    g.compare("state_out.m", GoldenCase::to_double(state.m));
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
