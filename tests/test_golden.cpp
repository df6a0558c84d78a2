// The golden program: one test per file in tests/data/golden and, when the
// environment variable XLSTM_GOLDEN_DIR is set, per file in that directory.
// Each file's `kind` picks the module under test (golden README §2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "golden/golden_case.hpp"
#include "golden/golden_cells.hpp"
#include "golden/golden_model.hpp"
#include "golden/golden_tirex.hpp"
#include "xlstm/io/file_path.hpp"

namespace {

namespace fs = std::filesystem;

using Runner = std::function<void(golden::GoldenCase&)>;

struct KindRunners {
  Runner f32, f64;
};

template <template <typename> class Kind>
KindRunners runners_for() {
  return {[](golden::GoldenCase& g) { Kind<float>::run(g); },
          [](golden::GoldenCase& g) { Kind<double>::run(g); }};
}

template <typename S>
struct SLstmCellKind {
  static void run(golden::GoldenCase& g) { golden::run_slstm_cell<S>(g); }
};
template <typename S>
struct MLstmCellKind {
  static void run(golden::GoldenCase& g) { golden::run_mlstm_cell<S>(g); }
};

#define XLSTM_GOLDEN_KIND(Name, function)                      \
  template <typename S>                                        \
  struct Name {                                                \
    static void run(golden::GoldenCase& g) { function<S>(g); } \
  };
XLSTM_GOLDEN_KIND(MLstmBlockKind, golden::run_mlstm_block)
XLSTM_GOLDEN_KIND(SLstmBlockKind, golden::run_slstm_block)
XLSTM_GOLDEN_KIND(BlockStackKind, golden::run_block_stack)
XLSTM_GOLDEN_KIND(LmModelKind, golden::run_lm_model)
XLSTM_GOLDEN_KIND(LmStepKind, golden::run_lm_step)
XLSTM_GOLDEN_KIND(XlstmLargeKind, golden::run_xlstm_large)
XLSTM_GOLDEN_KIND(SLstmCellGradKind, golden::run_slstm_cell_grad)
XLSTM_GOLDEN_KIND(MLstmCellGradKind, golden::run_mlstm_cell_grad)
XLSTM_GOLDEN_KIND(SLstmBlockGradKind, golden::run_slstm_block_grad)
XLSTM_GOLDEN_KIND(BlockStackGradKind, golden::run_block_stack_grad)
XLSTM_GOLDEN_KIND(LmModelGradKind, golden::run_lm_model_grad)
XLSTM_GOLDEN_KIND(LmTrainStepsKind, golden::run_lm_train_steps)
XLSTM_GOLDEN_KIND(MLstmBlockGradKind, golden::run_mlstm_block_grad)

// Kinds whose module exists map to runners; the others are known but skipped.
const std::map<std::string, KindRunners>& implemented_kinds() {
  static const std::map<std::string, KindRunners> kinds = {
      {"slstm_cell", runners_for<SLstmCellKind>()},
      {"mlstm_cell", runners_for<MLstmCellKind>()},
      {"mlstm_block", runners_for<MLstmBlockKind>()},
      {"slstm_block", runners_for<SLstmBlockKind>()},
      {"block_stack", runners_for<BlockStackKind>()},
      {"lm_model", runners_for<LmModelKind>()},
      {"lm_step", runners_for<LmStepKind>()},
      {"xlstm_large", runners_for<XlstmLargeKind>()},
      {"tirex_slstm_cell",
       {golden::run_tirex_slstm_cell,
        [](golden::GoldenCase&) { FAIL() << "TiRex golden files are float32 only"; }}},
      {"tirex_model",
       {golden::run_tirex_model,
        [](golden::GoldenCase&) { FAIL() << "TiRex golden files are float32 only"; }}},
      {"slstm_cell_grad", runners_for<SLstmCellGradKind>()},
      {"mlstm_cell_grad", runners_for<MLstmCellGradKind>()},
      {"slstm_block_grad", runners_for<SLstmBlockGradKind>()},
      {"block_stack_grad", runners_for<BlockStackGradKind>()},
      {"lm_model_grad", runners_for<LmModelGradKind>()},
      {"lm_train_steps", runners_for<LmTrainStepsKind>()},
      {"mlstm_block_grad", runners_for<MLstmBlockGradKind>()},
  };
  return kinds;
}

// The gradient kinds (golden README §11) run as their code lands.
const std::vector<std::string> known_kinds = {
    "slstm_cell",       "mlstm_cell",       "mlstm_block",      "slstm_block",
    "block_stack",      "lm_model",         "lm_step",          "xlstm_large",
    "tirex_slstm_cell", "tirex_model",      "slstm_cell_grad",  "mlstm_cell_grad",
    "mlstm_block_grad", "slstm_block_grad", "block_stack_grad", "lm_model_grad",
    "lm_train_steps"};

class GoldenFileTest : public ::testing::Test {
 public:
  explicit GoldenFileTest(std::string path) : path_(std::move(path)) {}

  void TestBody() override {
    golden::GoldenCase g(path_);  // throws (fails the test) on a malformed file
    std::printf("  %s: kind %s, %s\n", file_name().c_str(), g.kind().c_str(), g.dtype().c_str());
    const bool known =
        std::find(known_kinds.begin(), known_kinds.end(), g.kind()) != known_kinds.end();
    ASSERT_TRUE(known) << path_ << ": unknown golden kind '" << g.kind() << "'";
    auto it = implemented_kinds().find(g.kind());
    if (it == implemented_kinds().end()) {
      GTEST_SKIP() << "kind '" << g.kind() << "' has no module yet";
    }
    ASSERT_TRUE(g.dtype() == "float32" || g.dtype() == "float64") << "dtype " << g.dtype();
    (g.dtype() == "float32" ? it->second.f32 : it->second.f64)(g);
    g.expect_all_outputs_compared();
    // The tight tier is a diagnostic read across the set (golden README §12.3).
    if (g.has_tight_tier()) {
      std::printf("  %s: tight: %s\n", file_name().c_str(), g.tight_pass() ? "pass" : "fail");
    }
  }

 private:
  // The file's name in UTF-8 (a path's native string is wide on Windows).
  std::string file_name() const {
    return xlstm::io::detail::utf8_string(xlstm::io::detail::utf8_path(path_).filename());
  }

  std::string path_;
};

// Golden.<file name without .safetensors, dots as underscores>.
std::string test_name_for(const fs::path& file) {
  std::string name = file.filename().string();
  name = name.substr(0, name.size() - std::string(".safetensors").size());
  std::replace(name.begin(), name.end(), '.', '_');
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

void register_directory(const fs::path& dir, const std::string& suffix) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    const std::string path = file.string();
    ::testing::RegisterTest("Golden", (test_name_for(file) + suffix).c_str(), nullptr, nullptr,
                            __FILE__, __LINE__,
                            [path]() -> ::testing::Test* { return new GoldenFileTest(path); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  register_directory(fs::path(XLSTM_TEST_DATA_DIR) / "golden", "");
  if (const char* extra = std::getenv("XLSTM_GOLDEN_DIR"); extra && *extra) {
    if (!fs::is_directory(extra)) {
      std::fprintf(stderr, "XLSTM_GOLDEN_DIR=%s is not a directory\n", extra);
      return 2;
    }
    register_directory(extra, "_extra");
  }
  return RUN_ALL_TESTS();
}
