// Streaming: a small mLSTM/sLSTM BlockStack consumes a signal one sample at a
// time with step(), as a real-time loop would. Halfway through, a second run
// saves its state to a file (io::save_state), restores it into a fresh state
// (io::load_state) and carries on; its outputs must equal those of the
// uninterrupted run exactly. Prints the per-step latency percentiles.
//
//   streaming [steps]     (default 2000)
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "xlstm/xlstm.hpp"

namespace {

using xlstm::Index;

xlstm::BlockStackConfig stack_config() {
  xlstm::BlockStackConfig c;
  c.embedding_dim = 32;
  c.num_blocks = 3;
  c.slstm_at = {1};  // mLSTM, sLSTM, mLSTM
  c.mlstm_block.emplace();
  c.mlstm_block->mlstm.num_heads = 4;
  c.slstm_block.emplace();
  c.slstm_block->slstm.num_heads = 4;
  return c;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const auto i = std::size_t(std::ceil(p * double(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  Index steps = 2000;
  if (argc > 1 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::printf(
        "usage: streaming [steps >= 2]\n"
        "Feeds a small block stack one sample at a time, saves its state halfway, restores\n"
        "it into a fresh state, checks the stream continues exactly, prints step latency.\n");
    return 0;
  }
  if (argc > 1) steps = std::atol(argv[1]);
  if (argc > 2 || steps < 2) {
    std::fprintf(stderr, "usage: streaming [steps >= 2]\n");
    return 2;
  }

  xlstm::BlockStack<float> stack(stack_config());
  xlstm::Rng rng(7);
  stack.initialize(rng);
  const Index e = stack.embedding_dim();

  // The stream: E channels of noisy sines, one 1 x E sample per step.
  xlstm::Matrix<float> input(steps, e), noise(steps, e);
  rng.normal(noise, 0.0, 0.1);
  for (Index t = 0; t < steps; ++t) {
    for (Index c = 0; c < e; ++c) input(t, c) = std::sin(0.02f * float((c + 1) * t)) + noise(t, c);
  }

  // Run 1: uninterrupted, timing every step. step() does not allocate.
  using Clock = std::chrono::steady_clock;
  xlstm::Matrix<float> reference(steps, e), y_t(1, e);
  std::vector<double> latency_us(static_cast<std::size_t>(steps));
  auto state = stack.initial_state(1);
  for (Index t = 0; t < steps; ++t) {
    const auto t0 = Clock::now();
    stack.step(input.row(t), state, y_t);
    latency_us[std::size_t(t)] =
        std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    reference.row(t) = y_t;
  }

  // Run 2: stop halfway, checkpoint the state, restore it into a fresh one.
  const Index half = steps / 2;
  auto first = stack.initial_state(1);
  for (Index t = 0; t < half; ++t) stack.step(input.row(t), first, y_t);
  const auto path = std::filesystem::temp_directory_path() /
                    ("xlstm_streaming_" + std::to_string(::getpid()) + ".safetensors");
  xlstm::io::save_state(first, path.string());
  const auto bytes = std::filesystem::file_size(path);

  auto restored = stack.initial_state(1);
  xlstm::io::load_state(restored, xlstm::io::SafetensorsFile::open(path.string()));
  std::filesystem::remove(path);
  double max_diff = 0;
  for (Index t = half; t < steps; ++t) {
    stack.step(input.row(t), restored, y_t);
    max_diff = std::max(max_diff, double((y_t - reference.row(t)).cwiseAbs().maxCoeff()));
  }

  std::printf("stack: %ld blocks (%s), E = %ld; %ld steps of 1 x %ld samples\n",
              long(stack.num_blocks()), stack.config().block_map_string().c_str(), long(e),
              long(steps), long(e));
  std::printf(
      "state saved after step %ld: %ju bytes; restored run vs uninterrupted: "
      "max |diff| = %g\n",
      long(half), static_cast<std::uintmax_t>(bytes), max_diff);
  const double p50 = percentile(latency_us, 0.50), p99 = percentile(latency_us, 0.99);
  const double worst = percentile(latency_us, 1.0);
  std::printf(
      "step latency: p50 %.1f us, p99 %.1f us, max %.1f us, first step %.1f us "
      "(%.0f samples/s at p50)\n",
      p50, p99, worst, latency_us.front(), 1e6 / p50);
  if (max_diff != 0) {
    std::fprintf(stderr, "FAILED: the restored state does not continue the stream exactly\n");
    return 1;
  }
  std::printf("OK: restored state continues the stream exactly\n");
  return 0;
}
