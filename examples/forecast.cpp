// Forecasts columns of a CSV file with TiRex and writes the quantiles as CSV.
//
//   forecast DATA.csv [--column NAME|INDEX]... [--horizon H] [--checkpoint
//   model.ckpt|FILE.safetensors]
//            [--config CONFIG.json] [--rollout K] [--output OUT.csv] [--plot OUT.png] [--threads N]
//
// DATA.csv has a header line; each --column (a header name or a 0-based index; default: the
// last column) is one series, empty or non-numeric cells are missing values (NaN). Without a
// checkpoint a small random model runs (said on stderr) so the program works out of the box;
// a .safetensors file holds the official state dict (the released TiRex shape, or --config).
// The output has one line per series and step: series,step,q0.1,...,q0.9 (the model's quantiles).
// --plot draws the context and the forecast through benchmarks/plot_forecast.py (matplotlib).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "utf8_arguments.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/tirex/tirex.hpp"

namespace {

using xlstm::Index;
namespace tirex = xlstm::tirex;

const char* kUsage =
    "usage: forecast DATA.csv [--column NAME|INDEX]... [--horizon H] [--checkpoint FILE]\n"
    "                [--config CONFIG.json] [--rollout K] [--output OUT.csv] [--plot OUT.png]\n"
    "                [--threads N]\n"
    "  Forecasts H steps (default 32) of each column (default: the last) with TiRex and\n"
    "  writes series,step,<quantiles> lines (stdout or OUT.csv). FILE: the official model.ckpt\n"
    "  or a .safetensors state dict; none: a small random model. --plot needs matplotlib.\n";

/// An error of the command line: printed with the usage, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  std::istringstream in(line);
  while (std::getline(in, cell, ',')) {
    while (!cell.empty() && (cell.back() == '\r' || cell.back() == ' ')) cell.pop_back();
    while (!cell.empty() && cell.front() == ' ') cell.erase(cell.begin());
    cells.push_back(cell);
  }
  if (!line.empty() && line.back() == ',') cells.emplace_back();
  return cells;
}

/// The columns `wanted` (names or indices; empty: the last column) of `path`.
std::vector<std::vector<float>> read_columns(const std::string& path,
                                             std::vector<std::string>& wanted) {
  std::ifstream in;
  examples::open_utf8(in, path);
  if (!in) throw UsageError("cannot open '" + path + "'");
  std::string line;
  if (!std::getline(in, line)) throw UsageError("'" + path + "' is empty");
  const std::vector<std::string> header = split_csv_line(line);
  if (wanted.empty()) wanted.push_back(header.back());
  std::vector<std::size_t> index;
  for (std::string& w : wanted) {
    std::size_t found = header.size();
    for (std::size_t i = 0; i < header.size(); ++i) {
      if (header[i] == w) found = i;
    }
    if (found == header.size() && !w.empty() &&
        w.find_first_not_of("0123456789") == std::string::npos) {
      found = std::size_t(std::stoul(w));
      if (found < header.size()) w = header[found];
    }
    if (found >= header.size()) throw UsageError("no column '" + w + "' in '" + path + "'");
    index.push_back(found);
  }
  std::vector<std::vector<float>> series(index.size());
  while (std::getline(in, line)) {
    if (line.empty() || line == "\r") continue;
    const std::vector<std::string> cells = split_csv_line(line);
    for (std::size_t s = 0; s < index.size(); ++s) {
      float value = std::numeric_limits<float>::quiet_NaN();
      if (index[s] < cells.size() && !cells[index[s]].empty()) {
        char* end = nullptr;
        const float v = std::strtof(cells[index[s]].c_str(), &end);
        if (end != cells[index[s]].c_str() && *end == '\0') value = v;
      }
      series[s].push_back(value);
    }
  }
  if (series.front().empty()) throw UsageError("'" + path + "' has no data lines");
  return series;
}

/// A small TiRex with random weights, its config written as the official JSON
/// (what --config reads): P 32, W 512, D 64, 2 heads, 2 blocks, FF 128.
tirex::TiRexModel<float> small_random_model() {
  const char* json = R"({"input_patch_size": 32, "output_patch_size": 32,
      "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
      "block_kwargs": {"embedding_dim": 64, "num_heads": 2, "num_blocks": 2,
                       "ffn_proj_factor": 2.6667},
      "input_ff_dim": 128, "train_ctx_len": 512})";
  tirex::TiRexModel<float> model(tirex::tirex_config_from_json(xlstm::io::Json::parse(json)));
  tirex::randomize_weights(model, /*seed=*/42);
  return model;
}

tirex::TiRexModel<float> load_model(const std::string& checkpoint, const std::string& config) {
  if (checkpoint.empty()) {
    std::fprintf(stderr,
                 "forecast: no --checkpoint given: a small model with RANDOM weights "
                 "(the numbers mean nothing)\n");
    return small_random_model();
  }
  const bool safetensors =
      checkpoint.size() > 12 && checkpoint.compare(checkpoint.size() - 12, 12, ".safetensors") == 0;
  if (!safetensors) return tirex::load_tirex_checkpoint<float>(checkpoint);
  tirex::TiRexConfig c;  // the released TiRex, unless --config says otherwise
  if (!config.empty()) {
    std::ifstream in;
    examples::open_utf8(in, config);
    if (!in) throw UsageError("cannot open '" + config + "'");
    std::stringstream text;
    text << in.rdbuf();
    c = tirex::tirex_config_from_json(xlstm::io::Json::parse(text.str()));
  }
  tirex::TiRexModel<float> model(c);
  tirex::load_tirex_weights(model, xlstm::io::SafetensorsFile::open(checkpoint));
  return model;
}

Index positive_integer(const char* option, const std::string& value) {
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || v < 1) {
    throw UsageError(std::string(option) + " must be a positive integer, got '" + value + "'");
  }
  return Index(v);
}

}  // namespace

int main(int argc, char** argv) {
  examples::Utf8Arguments utf8(argc, argv);
  argv = utf8.argv();
  try {
    std::string data, checkpoint, config, output, plot;
    std::vector<std::string> columns;
    Index horizon = 32, rollout = 1;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw UsageError(arg + " needs a value");
        return argv[++i];
      };
      if (arg == "--help" || arg == "-h") {
        std::fputs(kUsage, stdout);
        return 0;
      } else if (arg == "--column") {
        columns.push_back(value());
      } else if (arg == "--horizon") {
        horizon = positive_integer("--horizon", value());
      } else if (arg == "--rollout") {
        rollout = positive_integer("--rollout", value());
      } else if (arg == "--threads") {
        xlstm::set_num_threads(int(positive_integer("--threads", value())));
      } else if (arg == "--checkpoint") {
        checkpoint = value();
      } else if (arg == "--config") {
        config = value();
      } else if (arg == "--output") {
        output = value();
      } else if (arg == "--plot") {
        plot = value();
      } else if (!arg.empty() && arg[0] == '-') {
        throw UsageError("unknown option '" + arg + "'");
      } else if (data.empty()) {
        data = arg;
      } else {
        throw UsageError("more than one data file ('" + data + "', '" + arg + "')");
      }
    }
    if (data.empty()) throw UsageError("no data file given");
    const std::vector<std::vector<float>> series = read_columns(data, columns);
    const tirex::TiRexModel<float> model = load_model(checkpoint, config);
    const auto f = tirex::forecast(model, series, horizon, rollout);

    std::ofstream file;
    if (!output.empty()) {
      examples::open_utf8(file, output);
      if (!file) throw UsageError("cannot write '" + output + "'");
    }
    std::ostream& out = output.empty() ? std::cout : file;
    out << "series,step";
    for (const double q : model.config().quantiles) out << ",q" << q;
    out << "\n";
    for (std::size_t s = 0; s < series.size(); ++s) {
      for (Index t = 0; t < horizon; ++t) {
        out << columns[s] << "," << t + 1;
        for (Index q = 0; q < model.config().num_quantiles(); ++q) {
          out << "," << f.quantiles(Index(s), t, q);
        }
        out << "\n";
      }
    }
    out.flush();
    if (!plot.empty()) {
      if (output.empty()) throw UsageError("--plot needs --output (the script reads that file)");
      const std::string command = "/usr/bin/python3 \"" XLSTM_PLOT_FORECAST_SCRIPT "\" \"" + data +
                                  "\" \"" + output + "\" \"" + plot + "\"";
      if (std::system(command.c_str()) != 0) {
        std::fprintf(stderr, "forecast: plotting failed (%s)\n", command.c_str());
        return 1;
      }
    }
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "forecast: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "forecast: %s\n", e.what());
    return 1;
  }
}
