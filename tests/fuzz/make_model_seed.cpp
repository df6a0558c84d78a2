// Writes the seed of the model_load fuzzer: the small model of
// fuzz::model_config(), initialised, saved with its official names.
//   g++ -std=c++17 -I include -I /usr/include/eigen3 -I tests tests/fuzz/make_model_seed.cpp \
//       -o /tmp/make_model_seed && /tmp/make_model_seed tests/fuzz/corpus/model_load/model.safetensors
#include <cstdio>

#include "fuzz/fuzz_entries.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT.safetensors\n", argv[0]);
    return 2;
  }
  xlstm::LanguageModel<float> model(fuzz::model_config());
  xlstm::Rng rng(7);
  model.initialize(rng);
  xlstm::io::save_module(model, argv[1]);
  return 0;
}
