// The small TiRex of the tests (test_tirex, test_no_alloc): large enough for the dense kernels
// (head size 32 > the small-head kernel's 16), small enough to run in milliseconds.
#pragma once

#include <cstdint>

#include "xlstm/tirex/tirex.hpp"

/// P 8, W 64 (N 8), D 64, 2 heads, 2 blocks, FF 48, 9 quantiles; random
/// weights (tirex::randomize_weights), prepared.
inline xlstm::tirex::TiRexModel<float> small_random_tirex(xlstm::SLstmNumerics numerics,
                                                          std::uint64_t seed) {
  xlstm::tirex::TiRexConfig c;
  c.input_patch_size = c.output_patch_size = 8;
  c.train_ctx_len = 64;
  c.embedding_dim = 64;
  c.num_heads = 2;
  c.num_blocks = 2;
  c.input_ff_dim = 48;
  c.numerics = numerics;
  xlstm::tirex::TiRexModel<float> model(c);
  xlstm::tirex::randomize_weights(model, seed);
  return model;
}
