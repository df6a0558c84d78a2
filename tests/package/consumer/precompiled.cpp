// Links the installed xlstm::precompiled: the block's members come from the
// library (XLSTM_PRECOMPILED), this file only calls them.
#include <cmath>
#include <cstdio>
#include <xlstm/xlstm.hpp>

int main() {
  xlstm::MLstmBlockConfig config;
  config.mlstm.embedding_dim = 16;
  config.mlstm.num_heads = 2;
  xlstm::MLstmBlock<float> block(config);
  auto state = block.initial_state(1);
  xlstm::Sequence<float> x(1, 4, 16), y;
  x.matrix().setConstant(0.5f);
  block.forward(x, state, y);
  xlstm::Matrix<float> y_t;
  block.step(x.time_step(3), state, y_t);
  std::printf("xlstm::precompiled: y_t[0, 0] = %g\n", static_cast<double>(y_t(0, 0)));
  return std::isfinite(y_t(0, 0)) ? 0 : 1;
}
