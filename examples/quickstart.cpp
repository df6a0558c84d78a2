// Quick start: an mLSTM block and an sLSTM block, a whole sequence through
// forward(), then the same modules continued one step at a time.
#include <cstdio>
#include <string>

#include "xlstm/xlstm.hpp"

int main(int argc, char** argv) {
  if (argc > 1) {
    const bool help = std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h";
    std::printf(
        "usage: quickstart\n"
        "Builds an mLSTM and an sLSTM block, runs a sequence through forward, then step.\n");
    return help ? 0 : 2;
  }
  using xlstm::Index;
  const Index batch = 2, time = 16, embedding = 64;

  xlstm::MLstmBlockConfig mcfg;  // field names and defaults of the PyTorch configs
  mcfg.mlstm.embedding_dim = embedding;
  mcfg.mlstm.num_heads = 4;
  mcfg.mlstm.context_length = time;
  xlstm::MLstmBlock<float> mlstm(mcfg);

  xlstm::SLstmBlockConfig scfg;
  scfg.slstm.embedding_dim = embedding;
  scfg.slstm.num_heads = 4;
  xlstm::SLstmBlock<float> slstm(scfg);

  xlstm::Rng rng(42);  // the official initialisation, from a seed
  mlstm.initialize(rng);
  slstm.initialize(rng);

  // A batch of sequences is one (B*T) x E matrix; states live outside the modules.
  xlstm::Sequence<float> x(batch, time, embedding), h, y;
  rng.normal(x.matrix(), 0.0, 1.0);
  auto mstate = mlstm.initial_state(batch);
  auto sstate = slstm.initial_state(batch);
  mlstm.forward(x, mstate, h);
  slstm.forward(h, sstate, y);
  std::printf("forward: x %ld x %ld x %ld -> y %ld x %ld x %ld (mLSTM inner dim %ld)\n",
              long(x.batch()), long(x.time()), long(x.features()), long(y.batch()), long(y.time()),
              long(y.features()), long(mlstm.inner_dim()));
  std::printf("y[0, T-1, 0:4] = %+.5f %+.5f %+.5f %+.5f\n", y(0, time - 1, 0), y(0, time - 1, 1),
              y(0, time - 1, 2), y(0, time - 1, 3));

  // Continue from the states left by forward(), one step (B x E) at a time.
  xlstm::Matrix<float> x_t(batch, embedding), h_t(batch, embedding), y_t(batch, embedding);
  for (int t = 0; t < 3; ++t) {
    rng.normal(x_t, 0.0, 1.0);
    mlstm.step(x_t, mstate, h_t);
    slstm.step(h_t, sstate, y_t);
    std::printf("step %d: y_t %ld x %ld, y_t[0, 0:4] = %+.5f %+.5f %+.5f %+.5f\n", t,
                long(y_t.rows()), long(y_t.cols()), y_t(0, 0), y_t(0, 1), y_t(0, 2), y_t(0, 3));
  }
  return 0;
}
