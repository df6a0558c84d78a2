// The model shapes and random weights that several benchmark programs share
// (xlstm_bench, xlstm_quantized_accuracy): the 125M language model, the
// xLSTM-Large shapes (a 7B-shaped block, 1.3B, the whole 7B architecture) and
// a fast generator of random weights for billions of values. No dependency on
// Google Benchmark.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "xlstm/xlstm.hpp"

namespace xbench {

using xlstm::Index;

/// Context length of the 125M model (and its prefill rows).
constexpr Index kLmContext = 512;

/// 124M parameters (E = 768, 24 blocks, sLSTM at 3, 11, 19, 4 heads each,
/// vocabulary 50304, tied embedding); untied would add another 38.6M.
inline xlstm::LanguageModelConfig config_125m() {
  xlstm::LanguageModelConfig c;
  c.embedding_dim = 768;
  c.num_blocks = 24;
  c.context_length = kLmContext;
  c.vocab_size = 50304;
  c.tie_weights = true;
  c.slstm_at = {3, 11, 19};
  c.mlstm_block = xlstm::MLstmBlockConfig{};
  c.mlstm_block->mlstm.num_heads = 4;
  c.slstm_block = xlstm::SLstmBlockConfig{};
  c.slstm_block->slstm.num_heads = 4;
  c.slstm_block->slstm.recurrent_weight_init = "standard";
  return c;
}

inline xlstm::LargeModelConfig config_7b_block() {
  xlstm::LargeModelConfig c;
  c.embedding_dim = 4096;
  c.num_heads = 8;
  c.num_blocks = 1;
  c.vocab_size = 1024;  // the head is not what this row measures
  return c;
}

inline xlstm::LargeModelConfig config_7b() {
  xlstm::LargeModelConfig c;
  c.embedding_dim = 4096;
  c.num_heads = 8;
  c.num_blocks = 32;
  c.vocab_size = 50304;
  return c;
}

inline xlstm::LargeModelConfig config_1_3b() {
  xlstm::LargeModelConfig c;
  c.embedding_dim = 2048;
  c.num_heads = 4;
  c.num_blocks = 24;
  c.vocab_size = 50304;
  return c;
}

/// Uniform random weights in [-1/sqrt(cols), 1/sqrt(cols)) (xorshift, fast:
/// billions of values).
class RandomWeights {
 public:
  explicit RandomWeights(std::uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  void row(Index cols, float* out) {
    const float scale = 1.0f / std::sqrt(float(cols));
    for (Index i = 0; i < cols; ++i) {
      s_ ^= s_ << 13;
      s_ ^= s_ >> 7;
      s_ ^= s_ << 17;
      const float u = float(s_ >> 40) / float(1 << 24) - 0.5f;  // uniform [-0.5, 0.5)
      out[i] = 2.0f * scale * u;
    }
  }

 private:
  std::uint64_t s_;
};

/// Gate biases like the HF initialisation.
inline void init_gate_biases(xlstm::LargeModel<float>& model) {
  for (auto& b : model.blocks()) {
    b.igate().bias().setConstant(-10.0f);
    xlstm::linspace_init(b.fgate().bias(), 3.0, 6.0);
  }
}

/// A rows x cols BF16 matrix of random values, generated row by row.
inline xlstm::WeightMatrix<float> random_bf16(Index rows, Index cols, RandomWeights& random) {
  auto w = xlstm::WeightMatrix<float>::half_zeros(xlstm::WeightStorage::bf16, rows, cols);
  std::vector<float> row(static_cast<std::size_t>(cols));
  for (Index r = 0; r < rows; ++r) {
    random.row(cols, row.data());
    for (Index c = 0; c < cols; ++c) {
      w.owned_half_bits()[r * cols + c] = xlstm::float_to_bf16(row[std::size_t(c)]);
    }
  }
  return w;
}

/// Fills every weight matrix of a model (any storage; e.g. built of
/// placeholders) with random BF16 matrices, one at a time.
inline void fill_bf16(xlstm::LargeModel<float>& model, std::uint64_t seed) {
  RandomWeights random(seed);
  for (auto* w : xlstm::weight_matrices(model)) {
    const Index rows = w->rows(), cols = w->cols();
    *w = xlstm::WeightMatrix<float>();  // what it held goes before the new matrix comes
    *w = random_bf16(rows, cols, random);
  }
  init_gate_biases(model);
}

/// A weight format's name, "+head" when the embedding and head are quantised
/// too (QuantizeOptions::include_embedding_and_head).
inline std::string format_label(xlstm::WeightStorage format, bool head) {
  return std::string(xlstm::storage_name(format)) + (head ? "+head" : "");
}

}  // namespace xbench
