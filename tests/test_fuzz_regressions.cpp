// Replays the fuzz corpora and every input the fuzzers found (tests/fuzz/) through
// the fuzzed entry points with any compiler, so a fixed crash stays fixed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "fuzz/fuzz_entries.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_fuzz_regressions {

namespace {

namespace fs = std::filesystem;

template <typename Entry>
std::size_t replay(const std::string& target, Entry entry) {
  std::size_t count = 0;
  for (const char* kind : {"corpus", "regressions"}) {
    const fs::path dir = fs::path(XLSTM_FUZZ_DIR) / kind / target;
    if (!fs::is_directory(dir)) continue;
    for (const auto& file : fs::directory_iterator(dir)) {
      if (!file.is_regular_file() || file.path().filename() == "README.md") continue;
      std::ifstream in(file.path(), std::ios::binary);
      const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                            std::istreambuf_iterator<char>());
      SCOPED_TRACE(file.path().string());
      EXPECT_NO_THROW(entry(bytes.data(), bytes.size()));
      ++count;
    }
  }
  return count;
}

TEST(FuzzRegressions, SafetensorsInputsNeverCrashOrThrowAnythingButError) {
  EXPECT_GT(replay("safetensors", fuzz::safetensors), 0u);
}

TEST(FuzzRegressions, ConfigJsonInputsNeverCrashOrThrowAnythingButError) {
  EXPECT_GT(replay("config_json", fuzz::config_json), 0u);
}

TEST(FuzzRegressions, ModelLoadInputsNeverCrashOrThrowAnythingButError) {
  EXPECT_GT(replay("model_load", fuzz::model_load), 0u);
}

TEST(FuzzRegressions, TorchCheckpointInputsNeverCrashOrThrowAnythingButError) {
  EXPECT_GT(replay("torch_checkpoint", fuzz::torch_checkpoint), 0u);
}

}  // namespace

}  // namespace xlstm_test_fuzz_regressions
