// Golden runners for the TiRex kinds: tirex_slstm_cell (golden README §12), the sLSTM cell in
// the official TiRex numerics (math §12), and tirex_model (golden README §13), the whole
// forecaster (math §13).
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "golden/golden_case.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/tirex/tirex.hpp"

namespace golden {

/// The outputs of one run of the cell on a tirex_slstm_cell file, in the
/// layouts of the stored tensors.
struct TirexCellOutputs {
  std::vector<double> y, c_all, n_all, m_all, y_out, c_out, n_out, m_out;
};

inline TirexCellOutputs run_tirex_cell_in(const GoldenCase& g, xlstm::SLstmNumerics numerics,
                                          bool prepare_bf16_kernel = false) {
  xlstm::SLstmCellConfig config;
  config.hidden_size = g.config().at("embedding_dim").get<Index>();
  config.num_heads = g.config().at("num_heads").get<Index>();
  config.numerics = numerics;
  xlstm::SLstmCell<float> cell(config);
  // The kernel (NH, DH, 4DH) and the head-major bias are the CUDA layout of
  // math §2.2, which the loader converts (golden README §12.2).
  xlstm::io::load_module(cell, g.file(), {"param."});
  if (prepare_bf16_kernel) cell.prepare_bf16_kernel();

  const auto x = g.sequence<float>("input.x");
  auto state = cell.initial_state(x.batch());
  if (g.has("state_in.y")) {
    auto load = [&](const char* name, xlstm::Matrix<float>& dst) {
      g.file().read_into<float>(name, dst.data(), std::size_t(dst.size()));
    };
    load("state_in.y", state.y);
    load("state_in.c", state.c);
    load("state_in.n", state.n);
    load("state_in.m", state.m);
  }
  xlstm::Sequence<float> y;
  xlstm::SLstmTrace<float> trace;
  cell.forward(x, state, y, &trace);
  return {g.in_heads_layout("output.y", y),        GoldenCase::to_double(trace.c.matrix()),
          GoldenCase::to_double(trace.n.matrix()), GoldenCase::to_double(trace.m.matrix()),
          GoldenCase::to_double(state.y),          GoldenCase::to_double(state.c),
          GoldenCase::to_double(state.n),          GoldenCase::to_double(state.m)};
}

/// The outputs paired with the names of the tensors they are checked against.
inline std::vector<std::pair<std::string, const std::vector<double>*>> by_tensor(
    const TirexCellOutputs& o) {
  return {{"output.y", &o.y},         {"output.c_all", &o.c_all}, {"output.n_all", &o.n_all},
          {"output.m_all", &o.m_all}, {"state_out.y", &o.y_out},  {"state_out.c", &o.c_out},
          {"state_out.n", &o.n_out},  {"state_out.m", &o.m_out}};
}

/// Checks the official numerics against every output at the file's
/// per-tensor tolerances, and prints how far the plain float mode lands, for
/// information (math §12.6). Float only: every TiRex golden file is float32.
inline void run_tirex_slstm_cell(GoldenCase& g) {
  const TirexCellOutputs official = run_tirex_cell_in(g, xlstm::SLstmNumerics::tirex_official);
  for (const auto& [name, values] : by_tensor(official)) g.compare(name, *values);
  // The kernel rounded once (SLstmCell::prepare_bf16_kernel) gives the same bits.
  const TirexCellOutputs prepared =
      run_tirex_cell_in(g, xlstm::SLstmNumerics::tirex_official, /*prepare_bf16_kernel=*/true);
  const auto official_tensors = by_tensor(official);
  const auto prepared_tensors = by_tensor(prepared);
  for (std::size_t i = 0; i < official_tensors.size(); ++i) {
    EXPECT_EQ(*prepared_tensors[i].second, *official_tensors[i].second)
        << official_tensors[i].first << " with the prepared bf16 kernel";
  }

  const TirexCellOutputs plain = run_tirex_cell_in(g, xlstm::SLstmNumerics::plain);
  double robust = 0, tight = 0;
  std::printf("    plain float mode (information), max|b-g|:");
  for (const auto& [name, values] : by_tensor(plain)) {
    if (name.rfind("output.", 0) == 0) {
      std::printf(" %s %.3g", name.c_str() + 7, g.max_abs_diff(name, *values));
    }
    robust = std::max(robust, g.worst_ratio(name, *values));
    tight = std::max(tight, g.worst_ratio(name, *values, /*tight=*/true));
  }
  std::printf("; worst ratio robust %.3g, tight %.3g\n", robust, tight);
}

/// The outputs of one forecast and one embedding on a tirex_model file, in the
/// layouts of the stored tensors (golden README §13.2).
struct TirexModelOutputs {
  std::vector<std::pair<std::string, std::vector<double>>> tensors;
  xlstm::Shape median_shape;
};

/// Runs the call the file records (golden README §13.1): the forecast of
/// `input.context` (or, when `input.lengths` is there, of the list of series
/// it encodes) and the embedding of `input.context`, in `numerics`.
inline TirexModelOutputs run_tirex_model_in(const GoldenCase& g, xlstm::SLstmNumerics numerics) {
  xlstm::tirex::TiRexConfig config = xlstm::tirex::tirex_config_from_json(g.config());
  config.numerics = numerics;
  xlstm::tirex::TiRexModel<float> model(config);
  xlstm::tirex::load_tirex_weights(model, g.file(), {"param."});

  const auto call = nlohmann::json::parse(g.meta("call"));
  const Index horizon = call.at("prediction_length").get<Index>();
  const Index accelerated = call.at("max_accelerated_rollout_steps").get<Index>();
  const auto shape = g.shape("input.context");
  EXPECT_EQ(shape.size(), 2u);
  xlstm::Matrix<float> context{Index(shape[0]), Index(shape[1])};
  g.file().read_into<float>("input.context", context.data(), std::size_t(context.size()));

  xlstm::tirex::FirstPass<float> first;
  xlstm::tirex::Forecast<float> forecast;
  if (g.has("input.lengths")) {
    // golden README §13.1: row b holds series b right-aligned; the official
    // call received the series as a list.
    const auto lengths = g.values<double>("input.lengths");
    std::vector<std::vector<float>> series(lengths.size());
    for (std::size_t b = 0; b < series.size(); ++b) {
      const Index length = Index(lengths[b]);
      const auto row = context.row(Index(b)).tail(length);
      series[b].assign(row.data(), row.data() + length);
    }
    forecast = xlstm::tirex::forecast(model, series, horizon, accelerated, &first);
  } else {
    forecast = xlstm::tirex::forecast(model, context, horizon, accelerated, &first);
  }
  const xlstm::Sequence<float> embedding = xlstm::tirex::embed_context(model, context);

  TirexModelOutputs out;
  out.median_shape = forecast.median_shape();
  std::vector<double> loc, scale;
  for (const auto& s : first.stats) {
    loc.push_back(double(s.loc));
    scale.push_back(double(s.scale));
  }
  out.tensors = {{"output.quantiles", GoldenCase::to_double(forecast.quantiles.matrix())},
                 {"output.mean", GoldenCase::to_double(forecast.median)},
                 {"output.embedding", GoldenCase::to_double(embedding.matrix())},
                 {"output.pass0_loc", loc},
                 {"output.pass0_scale", scale},
                 {"output.pass0_tokens", GoldenCase::to_double(first.tokens.matrix())},
                 {"output.pass0_head", GoldenCase::to_double(first.head.matrix())}};
  return out;
}

/// Checks every output of the official numerics at the file's per-tensor
/// tolerances; prints how far the plain float mode lands, for information
/// (math §13.9). Float only, like every TiRex golden file.
inline void run_tirex_model(GoldenCase& g) {
  const TirexModelOutputs official = run_tirex_model_in(g, xlstm::SLstmNumerics::tirex_official);
  EXPECT_EQ(official.median_shape, g.shape("output.mean")) << "shape of the median";
  for (const auto& [name, values] : official.tensors) g.compare(name, values);

  const TirexModelOutputs plain = run_tirex_model_in(g, xlstm::SLstmNumerics::plain);
  double robust = 0, tight = 0;
  std::printf("    plain float mode (information), max|b-g|:");
  for (const auto& [name, values] : plain.tensors) {
    if (name == "output.quantiles" || name == "output.embedding") {
      std::printf(" %s %.3g", name.c_str() + 7, g.max_abs_diff(name, values));
    }
    robust = std::max(robust, g.worst_ratio(name, values));
    tight = std::max(tight, g.worst_ratio(name, values, /*tight=*/true));
  }
  std::printf("; worst ratio robust %.3g, tight %.3g\n", robust, tight);
}

}  // namespace golden
