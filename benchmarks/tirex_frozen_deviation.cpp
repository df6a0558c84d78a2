// How far the frozen-scaler stream (math §13.11) lands from a full recompute: for series with
// and without a trend, after 1, 4, 16 and 64 appended patches, the largest difference over the
// next patch between the frozen-scaler median and the exact one, in units of the current
// window's scale; mean and max over several series. Random weights (tirex::randomize_weights).
//
//   tirex_frozen_deviation          a mid-size model (P 32, W 512, D 128, 4 heads, 4 blocks)
//   tirex_frozen_deviation --real   the released size (P 32, W 2048, D 512, 12 blocks)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "xlstm/tirex/tirex.hpp"

namespace {

using xlstm::Index;
using namespace xlstm::tirex;

std::vector<float> make_series(Index length, bool trend, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<float> s(static_cast<std::size_t>(length));
  for (Index t = 0; t < length; ++t) {
    s[std::size_t(t)] = 10.0f + 3.0f * std::sin(6.2832f * float(t) / 48.0f) + noise(rng) +
                        (trend ? 0.02f * float(t) : 0.0f);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const bool real = argc > 1 && std::strcmp(argv[1], "--real") == 0;
  TiRexConfig c;  // the released size
  if (!real) {
    c.train_ctx_len = 512;
    c.embedding_dim = 128;
    c.num_heads = 4;
    c.num_blocks = 4;
    c.input_ff_dim = 256;
  }
  TiRexModel<float> model(c);
  randomize_weights(model, 7);
  const Index p = c.patch_size(), w = c.train_ctx_len;
  const int runs = real ? 2 : 6;
  const std::vector<Index> appended_counts = {1, 4, 16, 64};
  std::printf("P %ld, W %ld, D %ld, %ld blocks; %d series per line; mean (max) deviation / scale\n",
              long(p), long(w), long(c.embedding_dim), long(c.num_blocks), runs);
  for (const bool trend : {false, true}) {
    for (const Index initial : {w / 4, w}) {
      std::vector<double> mean(appended_counts.size()), worst(appended_counts.size());
      for (int run = 0; run < runs; ++run) {
        const auto series = make_series(initial + 64 * p, trend, 100 + std::uint64_t(run));
        const std::vector<float> context(series.begin(), series.begin() + initial);
        ForecastStream<float> frozen(model, context, StreamMode::frozen_scaler);
        ForecastStream<float> exact(model, context, StreamMode::exact);
        Index appended = 0;
        for (std::size_t i = 0; i < appended_counts.size(); ++i) {
          for (; appended < appended_counts[i]; ++appended) {
            const float* patch = series.data() + initial + appended * p;
            frozen.append(patch, p);
            exact.append(patch, p);
          }
          const auto a = frozen.forecast(p), b = exact.forecast(p);
          const double scale = exact.statistics().scale;
          double d = 0;
          for (Index t = 0; t < p; ++t) {
            d = std::max(d, double(std::abs(a.median(0, t) - b.median(0, t))) / scale);
          }
          mean[i] += d / runs;
          worst[i] = std::max(worst[i], d);
        }
      }
      std::printf("%-10s initial %5ld:", trend ? "trend" : "stationary", long(initial));
      for (std::size_t i = 0; i < appended_counts.size(); ++i) {
        std::printf("  +%ld: %.2f (%.2f)", long(appended_counts[i]), mean[i], worst[i]);
      }
      std::printf("\n");
    }
  }
}
