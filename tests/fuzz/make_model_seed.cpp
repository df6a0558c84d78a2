// Writes the seeds of the model_load fuzzer: the small language model of
// fuzz::model_config() and the small xLSTM-Large model of
// fuzz::large_model_config(), initialised, saved with their official names;
// and the language model with its weight matrices quantised to int8_rows and
// to q4_g32 (where the input dimension allows), so that mutations reach the
// quantised reader (docs/math.md §16.4).
//   g++ -std=c++17 -I include -I /usr/include/eigen3 -I tests tests/fuzz/make_model_seed.cpp \
//       -o /tmp/make_model_seed && /tmp/make_model_seed tests/fuzz/corpus/model_load
#include <cstdio>
#include <string>

#include "fuzz/fuzz_entries.hpp"
#include "xlstm/core/quantize.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIRECTORY\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  xlstm::LanguageModel<float> model(fuzz::model_config());
  xlstm::Rng rng(7);
  model.initialize(rng);
  xlstm::io::save_module(model, dir + "/model.safetensors");
  for (const auto format : {xlstm::WeightStorage::int8_rows, xlstm::WeightStorage::q4_g32}) {
    xlstm::LanguageModel<float> quantized = model;
    xlstm::quantize_weights(quantized, format, {/*min_elements=*/1, true});
    xlstm::io::save_module(quantized,
                           dir + "/model_" + xlstm::storage_name(format) + ".safetensors");
  }
  xlstm::LargeModel<float> large(fuzz::large_model_config());
  large.initialize(rng, /*noise=*/0.5);
  xlstm::io::save_large_model(large, dir + "/large_model.safetensors");
  return 0;
}
