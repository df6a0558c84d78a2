// libFuzzer target: see fuzz_entries.hpp.
#include "fuzz_entries.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::torch_checkpoint(data, size);
  return 0;
}
