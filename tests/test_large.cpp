// xLSTM-Large: checkpoint formats (official / Hugging Face naming, fused
// weights, shards, inferred configs), 16-bit weights kept 16-bit (logits and
// resident memory), prefill/step consistency, generation and sampling, error
// messages and the config JSON.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/io/large_checkpoint.hpp"
#include "xlstm/model/generate.hpp"
#include "xlstm/model/large_model.hpp"

#include "test_util.hpp"

#if defined(__linux__)
#include <sys/wait.h>
#include <unistd.h>
#endif

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_large {

namespace {

namespace fs = std::filesystem;
namespace io = xlstm::io;
using test_util::max_abs_diff;
using test_util::random_tokens;
using xlstm::Index;
using xlstm::LargeModel;
using xlstm::LargeModelConfig;
using xlstm::Matrix;
using xlstm::Sequence;
using xlstm::Tokens;
using xlstm::Vector;
using xlstm::WeightMatrix;

template <typename T>
class Large : public ::testing::Test {};
using test_util::Scalars;
TYPED_TEST_SUITE(Large, Scalars, ::testing::internal::DefaultNameGenerator);

// ---------------------------------------------------------------------------
// Helpers

/// The model of most tests here: 2 blocks of width 64 with 2 heads, vocabulary
/// 64, in inference mode, returning its last states.
LargeModelConfig tiny_config(bool use_bias = false, bool add_out_norm = true) {
  LargeModelConfig c = test_util::large_config(64, 2, 2, 64);
  c.use_bias = use_bias;
  c.add_out_norm = add_out_norm;
  c.mode = "inference";
  c.return_last_states = true;
  return c;
}

/// A fresh model with noise on every matrix and on every norm weight and bias,
/// so that no tensor is trivially zero or one and a mix-up always shows.
template <typename S>
LargeModel<S> make_model(const LargeModelConfig& config, std::uint64_t seed = 7) {
  LargeModel<S> model(config);
  xlstm::Rng rng(seed);
  model.initialize(rng, /*noise=*/0.5);
  // Every vector (norm weights and biases, projection biases) of the model.
  model.for_each_parameter([&](const xlstm::ParameterRef<S>& p) {
    if (p.matrix || p.shape.size() != 1) return;
    xlstm::VectorMap<S> v(p.data, Index(p.size()));
    Vector<S> extra(v.size());
    rng.normal(extra, 0.0, 0.2);
    v += extra;
  });
  return model;
}

std::vector<std::int64_t> random_prompt(Index length, Index vocab, std::uint64_t seed) {
  const Tokens t = random_tokens(1, length, vocab, seed);
  return std::vector<std::int64_t>(t.data(), t.data() + t.size());
}

template <typename S>
Sequence<S> logits_of(const LargeModel<S>& model, const Tokens& tokens) {
  auto state = model.initial_state(tokens.rows());
  Sequence<S> logits;
  model.forward(tokens, state, logits);
  return logits;
}

template <typename S>
std::vector<const WeightMatrix<S>*> weight_matrices(const LargeModel<S>& model) {
  return xlstm::weight_matrices(model);
}

const char* const kTempPrefix = "xlstm_test_large_";

std::string temp_path(const std::string& name) {
  return (fs::path(::testing::TempDir()) / (kTempPrefix + name)).string();
}

/// Removes this program's files from the temp directory when all tests ran.
class RemoveTempFiles : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ignored;
    for (const auto& entry : fs::directory_iterator(::testing::TempDir(), ignored)) {
      if (entry.path().filename().string().rfind(kTempPrefix, 0) == 0) {
        fs::remove_all(entry.path(), ignored);
      }
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kRemoveTempFiles =
    ::testing::AddGlobalTestEnvironment(new RemoveTempFiles);

/// A fresh directory (or the path of a file in none) under the temp directory.
std::string fresh(const std::string& name) {
  const std::string p = temp_path(name);
  fs::remove_all(p);
  return p;
}

template <typename S>
std::string type_name() {
  return sizeof(S) == 4 ? "f32" : "f64";
}

/// Runs `f`, expects an xlstm::Error whose message holds every one of `parts`.
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  EXPECT_TRUE(test_util::ThrowsMentioning(f, parts));
}

void expect_same_dims(const LargeModelConfig& a, const LargeModelConfig& b) {
  EXPECT_EQ(a.embedding_dim, b.embedding_dim);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_blocks, b.num_blocks);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.qk_dim(), b.qk_dim());
  EXPECT_EQ(a.v_dim(), b.v_dim());
  EXPECT_EQ(a.ffn_dim(), b.ffn_dim());
  EXPECT_EQ(a.use_bias, b.use_bias);
  EXPECT_EQ(a.add_out_norm, b.add_out_norm);
}

// ---------------------------------------------------------------------------
// 1. Checkpoint formats

struct Format {
  const char* name;
  io::LargeNaming naming;
  bool fused;
  int shards;
  bool as_directory;
};

const Format kFormats[] = {
    {"official", io::LargeNaming::official, false, 1, false},
    {"hf", io::LargeNaming::hugging_face, false, 1, false},
    {"hf_qkv", io::LargeNaming::hugging_face_qkv_names, false, 1, false},
    {"fused", io::LargeNaming::official, true, 1, false},
    {"hf_fused", io::LargeNaming::hugging_face, true, 1, false},
    {"sharded", io::LargeNaming::official, false, 3, true},
    {"sharded_hf_qkv_fused", io::LargeNaming::hugging_face_qkv_names, true, 3, true},
    {"directory", io::LargeNaming::hugging_face_qkv_names, false, 1, true},
};

TYPED_TEST(Large, EveryCheckpointFormatGivesIdenticalLogits) {
  using S = TypeParam;
  for (const bool bias : {false, true}) {
    const LargeModelConfig config = tiny_config(bias, /*add_out_norm=*/!bias);
    const auto model = make_model<S>(config, bias ? 11 : 12);
    const Tokens tokens = random_tokens(2, 20, config.vocab_size, 3);
    const Sequence<S> expected = logits_of(model, tokens);
    for (const Format& f : kFormats) {
      SCOPED_TRACE(std::string(f.name) + (bias ? " with biases" : ""));
      const std::string path = fresh(std::string(f.name) + (bias ? "_bias_" : "_") +
                                     type_name<S>() + (f.as_directory ? "" : ".safetensors"));
      io::save_large_model(model, path, f.naming, f.fused, std::nullopt, f.shards, f.as_directory);

      // The files really are in the requested form.
      const auto files = io::CheckpointFiles::open(path);
      const bool hf = f.naming != io::LargeNaming::official;
      EXPECT_EQ(files.contains("backbone.embeddings.weight"), hf);
      EXPECT_EQ(files.contains("embedding.weight"), !hf);
      EXPECT_EQ(files.contains("backbone.blocks.1.mlstm_layer.qkv_opreact.weight"), f.fused);
      EXPECT_EQ(files.contains("backbone.blocks.1.ffn.proj_up_gate_z.weight"), f.fused);
      EXPECT_EQ(files.contains("backbone.blocks.1.mlstm_layer.query.weight"),
                !f.fused && f.naming == io::LargeNaming::hugging_face_qkv_names);
      EXPECT_EQ(files.contains("backbone.blocks.1.mlstm_layer.q.weight"),
                !f.fused && f.naming != io::LargeNaming::hugging_face_qkv_names);
      if (f.as_directory) {
        EXPECT_TRUE(fs::exists(fs::path(path) / "config.json"));
        EXPECT_EQ(fs::exists(fs::path(path) / "model.safetensors.index.json"), f.shards > 1);
        int count = 0;
        for (const auto& entry : fs::directory_iterator(path)) {
          count += entry.path().extension() == ".safetensors";
        }
        EXPECT_EQ(count, f.shards);
      }

      // Config from config.json (directories) or inferred from the shapes (files).
      const auto implicit = io::load_large_model<S>(path);
      expect_same_dims(implicit.config(), config);
      EXPECT_EQ(implicit.config().weight_mode, f.fused ? "fused" : "single");
      const auto explicit_config = io::load_large_model<S>(path, config);
      // Native storage: the same values and the same operations, so bit-identical.
      EXPECT_EQ(max_abs_diff(logits_of(implicit, tokens).matrix(), expected.matrix()), 0.0);
      EXPECT_EQ(max_abs_diff(logits_of(explicit_config, tokens).matrix(), expected.matrix()), 0.0);
      for (const auto* w : weight_matrices(implicit)) EXPECT_FALSE(w->is_half());
    }
  }
}

// A config whose factors do not survive dim / E * E in double: int(22 * (15 /
// 22.)) is 14 and int(22 * (30 / 22.)) is 29. The inferred config must still
// reproduce the file's shapes, also with v_dim != embedding_dim in fused mode.
TYPED_TEST(Large, InferredConfigReproducesAwkwardDimensions) {
  using S = TypeParam;
  LargeModelConfig config = test_util::large_config(22, 3, 1, 16);
  config.qk_dim_factor = 0.682;     // int(15.004) = 15
  config.v_dim_factor = 1.364;      // int(30.008) = 30
  config.ffn_proj_factor = 1.3636;  // 29.9992 -> 30 with multiple 2
  config.ffn_round_up_to_multiple_of = 2;
  ASSERT_EQ(config.qk_dim(), 15);
  ASSERT_EQ(config.v_dim(), 30);
  ASSERT_EQ(config.ffn_dim(), 30);
  const auto model = make_model<S>(config);
  const Tokens tokens = random_tokens(1, 9, config.vocab_size, 5);
  const Sequence<S> expected = logits_of(model, tokens);
  for (const bool fused : {false, true}) {
    SCOPED_TRACE(fused ? "fused" : "single");
    const std::string path =
        fresh(std::string("awkward_") + (fused ? "fused_" : "") + type_name<S>() + ".safetensors");
    io::save_large_model(model, path, io::LargeNaming::official, fused);
    const auto inferred = io::infer_large_model_config(io::CheckpointFiles::open(path));
    expect_same_dims(inferred, config);
    const auto loaded = io::load_large_model<S>(path);
    EXPECT_EQ(max_abs_diff(logits_of(loaded, tokens).matrix(), expected.matrix()), 0.0);
  }
}

// ---------------------------------------------------------------------------
// 2. BF16 / F16 weights

/// A copy of safetensors file `from` whose data area starts at an odd offset
/// (header padded with spaces), so that no 16-bit tensor is 2-byte aligned.
void write_misaligned_copy(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | std::uint8_t(bytes[std::size_t(i)]);
  std::string header(bytes.begin() + 8, bytes.begin() + 8 + std::ptrdiff_t(n));
  while (header.back() == ' ') header.pop_back();
  if (header.size() % 2 == 0) header += ' ';  // 8 + odd = odd data offset
  std::ofstream out(to, std::ios::binary);
  const std::uint64_t m = header.size();
  for (int i = 0; i < 8; ++i) out.put(char((m >> (8 * i)) & 0xff));
  out << header;
  out.write(bytes.data() + 8 + n, std::streamsize(bytes.size() - 8 - n));
}

TYPED_TEST(Large, HalfWeightsStayHalfAndMatchTheFloatUpcast) {
  using S = TypeParam;
  const LargeModelConfig config = tiny_config(/*use_bias=*/true);
  const auto model = make_model<S>(config, 21);
  const Tokens tokens = random_tokens(2, 20, config.vocab_size, 4);
  const Sequence<S> reference = logits_of(model, tokens);
  const double scale = reference.matrix().cwiseAbs().maxCoeff();
  const double eps = std::numeric_limits<S>::epsilon();

  for (const io::DType dtype : {io::DType::BF16, io::DType::F16}) {
    const bool bf16 = dtype == io::DType::BF16;
    SCOPED_TRACE(bf16 ? "BF16" : "F16");
    const std::string path =
        fresh(std::string("half_") + (bf16 ? "bf16_" : "f16_") + type_name<S>() + ".safetensors");
    io::save_large_model(model, path, io::LargeNaming::official, false, dtype);

    io::LargeLoadOptions keep, upcast;
    keep.keep_half_weights = true;
    upcast.keep_half_weights = false;
    const auto half = io::load_large_model<S>(path, std::nullopt, keep);
    const auto full = io::load_large_model<S>(path, std::nullopt, upcast);
    for (const auto* w : weight_matrices(half)) {
      EXPECT_TRUE(w->is_half());
      EXPECT_EQ(w->storage(), bf16 ? xlstm::WeightStorage::bf16 : xlstm::WeightStorage::f16);
    }
    for (const auto* w : weight_matrices(full)) EXPECT_FALSE(w->is_half());
    EXPECT_LT(half.weight_bytes(), full.weight_bytes());

    // Same 16-bit values upcast to S either way; only the order of the sums in
    // the products may differ: a few ulp of S per dot product of length <= U,
    // grown a little by the blocks. 1e3 eps * scale is ~1e-4 (float) or ~1e-13
    // (double) — far below the 16-bit rounding itself (~1e-3..1e-2).
    const Sequence<S> half_logits = logits_of(half, tokens);
    const double tight = 1e3 * eps * (1 + scale);
    const double d_same = max_abs_diff(half_logits.matrix(), logits_of(full, tokens).matrix());
    EXPECT_LE(d_same, tight);

    // Against the original weights: every weight moved by a relative <= u (BF16
    // u = 2^-8, F16 u = 2^-11). Logits are sums of such products through two
    // blocks; the errors are random in sign, so a few u of the logit scale.
    const double u = bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    const double loose = 8 * u * (1 + scale);
    const double d_original = max_abs_diff(half_logits.matrix(), reference.matrix());
    EXPECT_LE(d_original, loose);
    EXPECT_GT(d_original, tight);  // the 16-bit rounding is visible
    std::printf(
        "[ %s %s ] |half - upcast| = %.3g (limit %.3g), |half - original| = %.3g (limit "
        "%.3g), logit scale %.3g\n",
        bf16 ? "BF16" : "F16", type_name<S>().c_str(), d_same, tight, d_original, loose, scale);

    // Misaligned 16-bit data is copied (still 16-bit) and gives the same logits.
    const std::string odd = path + ".odd.safetensors";
    write_misaligned_copy(path, odd);
    const auto misaligned = io::load_large_model<S>(odd, std::nullopt, keep);
    for (const auto* w : weight_matrices(misaligned)) EXPECT_TRUE(w->is_half());
    EXPECT_EQ(max_abs_diff(logits_of(misaligned, tokens).matrix(), half_logits.matrix()), 0.0);

    // Fused and sharded 16-bit checkpoints: row views into the shared mapping.
    const std::string dir =
        fresh(std::string("half_fused_") + (bf16 ? "bf16_" : "f16_") + type_name<S>());
    io::save_large_model(model, dir, io::LargeNaming::hugging_face, true, dtype, 3, true);
    const auto fused = io::load_large_model<S>(dir, std::nullopt, keep);
    for (const auto* w : weight_matrices(fused)) EXPECT_TRUE(w->is_half());
    EXPECT_LE(max_abs_diff(logits_of(fused, tokens).matrix(), half_logits.matrix()), tight);

    // Saved again without a dtype, 16-bit matrices stay 16-bit (exact) and
    // the vectors are S: the same model back, and no file twice the size.
    const std::string again = path + ".again.safetensors";
    io::save_large_model(half, again);
    const io::SafetensorsFile file = io::SafetensorsFile::open(again);
    EXPECT_EQ(file.info("lm_head.weight").dtype, dtype);
    EXPECT_EQ(file.info("backbone.blocks.0.norm_mlstm.weight").dtype, io::dtype_of<S>());
    const auto reloaded = io::load_large_model<S>(again, std::nullopt, keep);
    EXPECT_EQ(max_abs_diff(logits_of(reloaded, tokens).matrix(), half_logits.matrix()), 0.0);
  }
}

// ---------------------------------------------------------------------------
// 3. Resident memory of a BF16 checkpoint kept 16-bit

struct Rss {
  double total = -1, anon = -1, file = -1;  // bytes
  double peak = -1;                         // VmHWM: the most VmRSS since the last reset
};

[[maybe_unused]] Rss read_rss() {
  Rss r;
  std::ifstream in("/proc/self/status");
  std::string key;
  double kb = 0;
  std::string unit;
  while (in >> key) {
    if (key == "VmRSS:" || key == "RssAnon:" || key == "RssFile:" || key == "VmHWM:") {
      in >> kb >> unit;
      (key == "VmRSS:"     ? r.total
       : key == "RssAnon:" ? r.anon
       : key == "VmHWM:"   ? r.peak
                           : r.file) = kb * 1024;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return r;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false where that is not
// allowed, and then peaks are not checked.
[[maybe_unused]] bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.close();
  return bool(clear) && read_rss().peak >= 0 && read_rss().peak <= read_rss().total * 1.1 + 4e6;
}

TEST(LargeMemory, Bf16CheckpointStaysSixteenBitInMemory) {
#if defined(XLSTM_TEST_UNDER_ASAN)
  GTEST_SKIP() << "AddressSanitizer inflates and delays resident memory; RSS is meaningless here";
#elif !defined(__linux__)
  GTEST_SKIP() << "needs /proc/self/status and fork (Linux)";
#else
  if (read_rss().total < 0 || read_rss().anon < 0) {
    GTEST_SKIP() << "/proc/self/status with VmRSS/RssAnon is not available";
  }
  const LargeModelConfig config = test_util::large_config(1024, 4, 4, 8192);
  const std::string path = fresh("memory_bf16.safetensors");
  const auto start = std::chrono::steady_clock::now();

  // Write the checkpoint from a child process, so that the float model built
  // for it never lives (or lingers in the allocator) in this process. The
  // child runs no OpenMP region (libgomp is not fork-safe) and leaves by _exit.
  const pid_t child = fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    int status = 0;
    try {
      LargeModel<float> model(config);
      std::srand(1);
      for (const auto* w : weight_matrices(model)) {
        auto& m = const_cast<WeightMatrix<float>*>(w)->native();
        m = Matrix<float>::Random(m.rows(), m.cols()) * 0.05f;
      }
      io::save_large_model(model, path, io::LargeNaming::official, false, io::DType::BF16);
    } catch (...) {
      status = 1;
    }
    _exit(status);
  }
  int status = -1;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "writing the checkpoint failed";
  const double bf16_bytes = double(fs::file_size(path));
  const double mb = 1024.0 * 1024.0;

  const Tokens tokens = random_tokens(1, 6, config.vocab_size, 9);
  auto load_and_run = [&](bool keep_half, Sequence<float>& logits) {
    io::LargeLoadOptions options;
    options.keep_half_weights = keep_half;
    const bool peak_known = reset_peak_rss();
    const Rss before = read_rss();
    Rss after, loaded;
    {
      const auto model = io::load_large_model<float>(path, std::nullopt, options);
      loaded = read_rss();
      EXPECT_EQ(weight_matrices(model).front()->is_half(), keep_half);
      auto state = model.initial_state(1);
      model.forward(tokens, state, logits);
      after = read_rss();
    }
    std::printf(
        "[ memory ] keep_half=%d: RSS %.1f -> %.1f MB (+%.1f MB: anonymous %+.1f MB, "
        "file-backed %+.1f MB); BF16 file %.1f MB\n",
        int(keep_half), before.total / mb, after.total / mb, (after.total - before.total) / mb,
        (after.anon - before.anon) / mb, after.file >= 0 ? (after.file - before.file) / mb : 0.0,
        bf16_bytes / mb);
    if (keep_half && peak_known) {
      // Never more than the file's pages, one tensor converted for the
      // finiteness check and activations on the way, not even for a moment:
      // the model is built of placeholders, not of float zeros first (which
      // would add 2 x bf16_bytes at the peak, then be freed).
      std::printf("[ memory ] keep_half=1: peak while loading +%.1f MB\n",
                  (loaded.peak - before.total) / mb);
      EXPECT_LT(loaded.peak - before.total, 1.6 * bf16_bytes);
    }
    return std::make_pair(after.total - before.total, after.anon - before.anon);
  };

  Sequence<float> half_logits, float_logits;
  const auto [half_total, half_anon] = load_and_run(true, half_logits);
  // Kept 16-bit: at most the file's pages plus activations. A float copy would
  // add 2 x bf16_bytes on top.
  EXPECT_LT(half_total, 1.5 * bf16_bytes);
  EXPECT_LT(half_anon, 0.25 * bf16_bytes);

  // The measurement can see a float copy: upcasting adds about 2 x bf16_bytes.
  const auto [float_total, float_anon] = load_and_run(false, float_logits);
  EXPECT_GT(float_anon, 1.5 * bf16_bytes);
  (void)float_total;
  // Same BF16 values either way (tiled products here: only summation order).
  const double scale = float_logits.matrix().cwiseAbs().maxCoeff();
  const double diff = max_abs_diff(half_logits.matrix(), float_logits.matrix());
  EXPECT_LE(diff, 1e3 * std::numeric_limits<float>::epsilon() * (1 + scale));
  std::printf("[ memory ] |half - upcast| logits %.3g (scale %.3g); %.2f s in all\n", diff, scale,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  fs::remove(path);
#endif
}

// The same for a NeurIPS language model (embedding, head and every Linear
// layer kept 16-bit, opt-in with LoadOptions::keep_half_weights).
TEST(LargeMemory, NeuripsBf16CheckpointStaysSixteenBitInMemory) {
#if defined(XLSTM_TEST_UNDER_ASAN)
  GTEST_SKIP() << "AddressSanitizer inflates and delays resident memory; RSS is meaningless here";
#elif !defined(__linux__)
  GTEST_SKIP() << "needs /proc/self/status and fork (Linux)";
#else
  if (read_rss().total < 0 || read_rss().anon < 0) {
    GTEST_SKIP() << "/proc/self/status with VmRSS/RssAnon is not available";
  }
  auto config = test_util::mixed_stack_config<xlstm::LanguageModelConfig>(512, 2, {1});
  config.vocab_size = 16384;
  const std::string dir = fresh("memory_neurips_bf16");
  const pid_t child = fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    int status = 0;
    try {
      xlstm::LanguageModel<float> model(config);
      fs::create_directories(dir);
      io::SafetensorsWriter writer;
      io::add_module(writer, model, "", io::DType::BF16);
      writer.save((fs::path(dir) / "model.safetensors").string());
      std::ofstream((fs::path(dir) / "config.json").string())
          << io::to_json(model.config()).dump(2);
    } catch (...) {
      status = 1;
    }
    _exit(status);
  }
  int status = -1;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "writing the checkpoint failed";
  const double matrix_bytes = 2.0 * 2 * 16384 * 512;  // BF16 embedding and head alone
  const Tokens tokens = random_tokens(1, 6, config.vocab_size, 9);
  auto load_and_run = [&](bool keep_half, Sequence<float>& logits) {
    io::LoadOptions options;
    options.keep_half_weights = keep_half;
    const Rss before = read_rss();
    Rss after;
    {
      const auto model = io::load_language_model<float>(dir, options);
      EXPECT_EQ(model.embedding_matrix().is_half(), keep_half);
      auto state = model.initial_state(1);
      model.forward(tokens, state, logits);
      after = read_rss();
    }
    return std::make_pair(after.total - before.total, after.anon - before.anon);
  };
  Sequence<float> half_logits, float_logits;
  const auto [half_total, half_anon] = load_and_run(true, half_logits);
  const auto [float_total, float_anon] = load_and_run(false, float_logits);
  std::printf(
      "[ memory ] NeurIPS LM: kept 16-bit +%.1f MB (anonymous %+.1f MB), upcast +%.1f MB "
      "(anonymous %+.1f MB); BF16 embedding + head %.1f MB\n",
      half_total / 1048576.0, half_anon / 1048576.0, float_total / 1048576.0,
      float_anon / 1048576.0, matrix_bytes / 1048576.0);
  // Kept 16-bit: no float copy of the big matrices (which would be 2x their bytes).
  EXPECT_LT(half_anon, 0.5 * matrix_bytes);
  EXPECT_GT(float_anon, 1.5 * matrix_bytes);
  const double scale = float_logits.matrix().cwiseAbs().maxCoeff();
  EXPECT_LE(max_abs_diff(half_logits.matrix(), float_logits.matrix()),
            1e3 * std::numeric_limits<float>::epsilon() * (1 + scale));
  fs::remove_all(dir);
#endif
}

// ---------------------------------------------------------------------------
// 4. Prefill, pieces and steps agree

/// Float: chunkwise vs recurrent differ by rounding (math §10: ~1e-5 on h);
/// double: ~1e-12.
template <typename S>
double form_tolerance(double scale) {
  return test_util::per_scalar<S>(2e-5, 1e-11) * (1 + scale);
}

TYPED_TEST(Large, PrefillThenStepsEqualsStepsAllTheWay) {
  using S = TypeParam;
  LargeModelConfig config = tiny_config();
  config.chunk_size = 8;  // prompts of 21: two whole chunks and a tail
  const auto model = make_model<S>(config, 31);
  const Index batch = 2, prompt = 21, more = 7;
  const Tokens all = random_tokens(batch, prompt + more, config.vocab_size, 6);

  // Prefill with forward, then one step per continuation token.
  auto state = model.initial_state(batch);
  Sequence<S> prefill;
  model.forward(all.leftCols(prompt), state, prefill);
  Sequence<S> a(batch, more + 1, config.vocab_size);
  for (Index b = 0; b < batch; ++b) a.at(b, 0) = prefill.at(b, prompt - 1);
  Matrix<S> row(batch, config.vocab_size);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(batch));
  for (Index t = 0; t < more; ++t) {
    for (Index b = 0; b < batch; ++b) ids[std::size_t(b)] = all(b, prompt + t);
    model.step(ids, state, row);
    for (Index b = 0; b < batch; ++b) a.at(b, t + 1) = row.row(b);
  }

  // Step all the way from the zero state.
  auto step_state = model.initial_state(batch);
  Sequence<S> step_all(batch, prompt + more, config.vocab_size);
  for (Index t = 0; t < prompt + more; ++t) {
    for (Index b = 0; b < batch; ++b) ids[std::size_t(b)] = all(b, t);
    model.step(ids, step_state, row);
    for (Index b = 0; b < batch; ++b) step_all.at(b, t) = row.row(b);
  }
  Sequence<S> c(batch, more + 1, config.vocab_size);
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t <= more; ++t) c.at(b, t) = step_all.at(b, prompt - 1 + t);
  }
  const double scale = c.matrix().cwiseAbs().maxCoeff();
  EXPECT_LE(max_abs_diff(a.matrix(), c.matrix()), form_tolerance<S>(scale));
  // The whole prompt too, and the final states.
  for (Index b = 0; b < batch; ++b) {
    EXPECT_LE(max_abs_diff(prefill.rows_of(b), step_all.rows_of(b).topRows(prompt)),
              form_tolerance<S>(scale));
  }
  for (std::size_t i = 0; i < state.blocks.size(); ++i) {
    const auto& x = state.blocks[i].cell;
    const auto& y = step_state.blocks[i].cell;
    const double cs = std::max<double>(1.0, y.C.cwiseAbs().maxCoeff());
    EXPECT_LE(max_abs_diff(x.C, y.C), form_tolerance<S>(cs));
    EXPECT_LE(max_abs_diff(x.n, y.n), form_tolerance<S>(cs));
    EXPECT_LE(max_abs_diff(x.m, y.m), form_tolerance<S>(1));
  }
}

TYPED_TEST(Large, ForwardInPiecesEqualsOneForwardAndT1EqualsStep) {
  using S = TypeParam;
  LargeModelConfig config = tiny_config(/*use_bias=*/true);
  config.chunk_size = 8;
  const auto model = make_model<S>(config, 41);
  const Index batch = 3, time = 30;
  const Tokens tokens = random_tokens(batch, time, config.vocab_size, 8);
  auto whole_state = model.initial_state(batch);
  Sequence<S> whole;
  model.forward(tokens, whole_state, whole);
  const double scale = whole.matrix().cwiseAbs().maxCoeff();

  for (const Index split : {Index(1), Index(8), Index(13), Index(29)}) {
    SCOPED_TRACE("split at " + std::to_string(split));
    auto state = model.initial_state(batch);
    Sequence<S> first, second;
    model.forward(tokens.leftCols(split), state, first);
    model.forward(tokens.rightCols(time - split), state, second);
    for (Index b = 0; b < batch; ++b) {
      EXPECT_LE(max_abs_diff(first.rows_of(b), whole.rows_of(b).topRows(split)),
                form_tolerance<S>(scale));
      EXPECT_LE(max_abs_diff(second.rows_of(b), whole.rows_of(b).bottomRows(time - split)),
                form_tolerance<S>(scale));
    }
    for (std::size_t i = 0; i < state.blocks.size(); ++i) {
      const double cs = std::max<double>(1.0, whole_state.blocks[i].cell.C.cwiseAbs().maxCoeff());
      EXPECT_LE(max_abs_diff(state.blocks[i].cell.C, whole_state.blocks[i].cell.C),
                form_tolerance<S>(cs));
      EXPECT_LE(max_abs_diff(state.blocks[i].cell.n, whole_state.blocks[i].cell.n),
                form_tolerance<S>(cs));
      EXPECT_LE(max_abs_diff(state.blocks[i].cell.m, whole_state.blocks[i].cell.m),
                form_tolerance<S>(1));
    }
  }

  // forward of T = 1 from a carried state equals step from the same state.
  auto state = model.initial_state(batch);
  Sequence<S> ignored;
  model.forward(tokens.leftCols(17), state, ignored);
  auto stepped = state;
  Sequence<S> one;
  model.forward(tokens.middleCols(17, 1), state, one);
  Matrix<S> row(batch, config.vocab_size);
  std::vector<std::int64_t> ids;
  for (Index b = 0; b < batch; ++b) ids.push_back(tokens(b, 17));
  model.step(ids, stepped, row);
  EXPECT_LE(max_abs_diff(one.matrix(), row), form_tolerance<S>(scale));
  for (std::size_t i = 0; i < state.blocks.size(); ++i) {
    EXPECT_LE(max_abs_diff(state.blocks[i].cell.C, stepped.blocks[i].cell.C), form_tolerance<S>(1));
    EXPECT_LE(max_abs_diff(state.blocks[i].cell.m, stepped.blocks[i].cell.m), form_tolerance<S>(1));
  }
}

// ---------------------------------------------------------------------------
// 5. Generation and sampling

using Outputs = std::vector<std::vector<std::int64_t>>;

/// Greedy by hand: forward over the prompt, then argmax and step.
template <typename S>
std::vector<std::int64_t> manual_greedy(
    const LargeModel<S>& model, const std::vector<std::int64_t>& prompt, Index length,
    xlstm::MLstmStateStorage storage = xlstm::MLstmStateStorage::full) {
  Tokens t(1, Index(prompt.size()));
  for (std::size_t i = 0; i < prompt.size(); ++i) t(0, Index(i)) = prompt[i];
  auto state = model.initial_state(1);
  state.set_mlstm_storage(storage);
  Sequence<S> logits;
  model.forward(t, state, logits);
  Matrix<S> row = logits.at(0, logits.time() - 1);
  std::vector<std::int64_t> out;
  for (Index i = 0; i < length; ++i) {
    Index best = 0;
    row.row(0).maxCoeff(&best);
    out.push_back(best);
    if (i + 1 < length) model.step(std::vector<std::int64_t>{best}, state, row);
  }
  return out;
}

TYPED_TEST(Large, GreedyGenerationMatchesArgmaxAndBatchesAgree) {
  using S = TypeParam;
  const LargeModelConfig config = tiny_config();
  const auto model = make_model<S>(config, 51);
  const Outputs prompts = {random_prompt(1, 64, 1), random_prompt(5, 64, 2),
                           random_prompt(17, 64, 3), random_prompt(70, 64, 4)};
  xlstm::GenerateOptions options;
  options.max_length = 12;
  const Outputs batched = xlstm::generate(model, prompts, options);
  ASSERT_EQ(batched.size(), prompts.size());
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    EXPECT_EQ(batched[p].size(), 12u);
    EXPECT_EQ(batched[p], manual_greedy(model, prompts[p], 12));
    EXPECT_EQ(batched[p], xlstm::generate(model, Outputs{prompts[p]}, options)[0]);
  }

  // top_k = 1 and a tiny top_p are greedy whatever the temperature.
  xlstm::GenerateOptions k1 = options;
  k1.temperature = 1.5;
  k1.top_k = 1;
  k1.seed = 99;
  EXPECT_EQ(xlstm::generate(model, prompts, k1), batched);
  xlstm::GenerateOptions p0 = options;
  p0.temperature = 1.5;
  p0.top_p = 1e-9;
  EXPECT_EQ(xlstm::generate(model, prompts, p0), batched);

  // C stored in bfloat16 (math §4.8): the same decode on a converted state.
  // The prefill runs in Scalar and rounds C only when it ends, so the first
  // token is the full-storage one.
  xlstm::GenerateOptions bf16 = options;
  bf16.mlstm_state_storage = xlstm::MLstmStateStorage::bf16;
  const Outputs rounded = xlstm::generate(model, prompts, bf16);
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    SCOPED_TRACE("bf16 state, prompt " + std::to_string(p));
    EXPECT_EQ(rounded[p], manual_greedy(model, prompts[p], 12, xlstm::MLstmStateStorage::bf16));
    EXPECT_EQ(rounded[p][0], batched[p][0]);
  }

  // Empty prompt: one BOS token.
  xlstm::GenerateOptions bos = options;
  bos.bos_token = 5;
  EXPECT_EQ(xlstm::generate(model, Outputs{{}}, bos), xlstm::generate(model, Outputs{{5}}, bos));
  EXPECT_EQ(xlstm::generate(model, Outputs{{}, {3, 4}}, options),
            xlstm::generate(model, Outputs{{0}, {3, 4}}, options));

  // max_length 0: nothing; max_length is respected.
  xlstm::GenerateOptions none = options;
  none.max_length = 0;
  int calls = 0;
  none.on_token = [&calls](std::size_t, std::int64_t) { ++calls; };
  const Outputs empty = xlstm::generate(model, prompts, none);
  ASSERT_EQ(empty.size(), prompts.size());
  for (const auto& o : empty) EXPECT_TRUE(o.empty());
  EXPECT_EQ(calls, 0);
  xlstm::GenerateOptions three = options;
  three.max_length = 3;
  for (const auto& o : xlstm::generate(model, prompts, three)) EXPECT_EQ(o.size(), 3u);
  EXPECT_TRUE(xlstm::generate(model, Outputs{}, options).empty());
}

TYPED_TEST(Large, StopTokensAndStreamingCallback) {
  using S = TypeParam;
  const LargeModelConfig config = tiny_config();
  const auto model = make_model<S>(config, 61);
  const Outputs prompts = {random_prompt(4, 64, 10), random_prompt(9, 64, 11),
                           random_prompt(2, 64, 12)};
  xlstm::GenerateOptions options;
  options.max_length = 16;
  const Outputs free_run = xlstm::generate(model, prompts, options);

  // Stop on the 4th token of row 0 (and on one that never comes). Greedy rows
  // are independent, so each row is its free run cut after its first stop
  // token (included), whatever the other rows do.
  options.stop_tokens = {free_run[0][3], 1000};
  std::vector<std::pair<std::size_t, std::int64_t>> seen;
  options.on_token = [&seen](std::size_t p, std::int64_t t) { seen.push_back({p, t}); };
  const Outputs stopped = xlstm::generate(model, prompts, options);
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    const auto& g = free_run[p];
    const auto at = std::find(g.begin(), g.end(), options.stop_tokens[0]);
    EXPECT_EQ(stopped[p], std::vector<std::int64_t>(g.begin(), at == g.end() ? g.end() : at + 1));
  }
  EXPECT_LE(stopped[0].size(), 4u);
  EXPECT_EQ(stopped[0].back(), options.stop_tokens[0]);

  // The callback saw every token, in order: step by step, rows in order,
  // finished rows no more.
  std::vector<std::pair<std::size_t, std::int64_t>> expected_calls;
  for (std::size_t s = 0; s < 16; ++s) {
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      if (s < stopped[p].size()) expected_calls.push_back({p, stopped[p][s]});
    }
  }
  EXPECT_EQ(seen, expected_calls);

  // Sampled rows: each ends at its first stop token or at max_length.
  options.temperature = 1.0;
  options.seed = 3;
  options.on_token = nullptr;
  options.stop_tokens = {7, 8, 9, 10, 11, 12, 13, 14};  // 1/8 per draw: most rows stop early
  std::size_t early = 0;
  for (const auto& row : xlstm::generate(model, Outputs(6, prompts[1]), options)) {
    ASSERT_FALSE(row.empty());
    const auto first = std::find_first_of(row.begin(), row.end(), options.stop_tokens.begin(),
                                          options.stop_tokens.end());
    if (first == row.end()) {
      EXPECT_EQ(row.size(), 16u);
    } else {
      EXPECT_EQ(first + 1, row.end());
      ++early;
    }
  }
  EXPECT_GT(early, 0u);
}

TYPED_TEST(Large, SamplingIsSeededAndRespectsTopKAndTopP) {
  using S = TypeParam;
  const LargeModelConfig config = tiny_config();
  const auto model = make_model<S>(config, 71);
  const Outputs prompts = {random_prompt(6, 64, 20)};
  xlstm::GenerateOptions options;
  options.max_length = 32;
  options.temperature = 1.0;
  options.top_k = 20;
  options.top_p = 0.9;
  options.seed = 1234;
  const Outputs a = xlstm::generate(model, prompts, options);
  const Outputs b = xlstm::generate(model, prompts, options);
  EXPECT_EQ(a, b);
  options.seed = 4321;
  // At least ~10 candidates per step (near-uniform logits of a random model):
  // 32 equal draws have a probability below 1e-30.
  EXPECT_NE(xlstm::generate(model, prompts, options), a);

  // Replay the sampled sequence: every token is among the top_k most likely,
  // and inside the top_p nucleus, of the logits it was drawn from.
  const std::vector<std::pair<Index, double>> settings = {{3, 1.0}, {0, 0.5}};
  for (const auto& [top_k, top_p] : settings) {
    SCOPED_TRACE("top_k " + std::to_string(top_k) + " top_p " + std::to_string(top_p));
    xlstm::GenerateOptions o;
    o.max_length = 24;
    o.temperature = 1.3;
    o.top_k = top_k;
    o.top_p = top_p;
    o.seed = 77;
    const auto tokens = xlstm::generate(model, prompts, o)[0];
    Tokens t(1, Index(prompts[0].size()));
    for (std::size_t i = 0; i < prompts[0].size(); ++i) t(0, Index(i)) = prompts[0][i];
    auto state = model.initial_state(1);
    Sequence<S> logits;
    model.forward(t, state, logits);
    Matrix<S> row = logits.at(0, logits.time() - 1);
    std::size_t distinct_ranks = 0;
    for (const std::int64_t token : tokens) {
      std::vector<double> p(static_cast<std::size_t>(config.vocab_size));
      for (Index i = 0; i < config.vocab_size; ++i) p[std::size_t(i)] = double(row(0, i)) / 1.3;
      const double top = *std::max_element(p.begin(), p.end());
      double sum = 0;
      for (double& x : p) sum += (x = std::exp(x - top));
      std::vector<double> sorted(p);
      std::sort(sorted.rbegin(), sorted.rend());
      const double mine = p[std::size_t(token)];
      const auto rank =
          std::size_t(std::count_if(p.begin(), p.end(), [&](double x) { return x > mine; }));
      if (top_k > 0) {
        EXPECT_LT(rank, std::size_t(top_k));
      }
      // Mass strictly above this token must be below top_p, else it was cut.
      double above = 0;
      for (std::size_t i = 0; i < rank; ++i) above += sorted[i] / sum;
      EXPECT_LT(above, top_p + 1e-12);
      distinct_ranks += rank > 0;
      model.step(std::vector<std::int64_t>{token}, state, row);
    }
    EXPECT_GT(distinct_ranks, 0u);  // really sampled, not greedy
  }
}

// ---------------------------------------------------------------------------
// 6. Errors

TEST(LargeErrors, BadTokensAndBatches) {
  const auto model = make_model<float>(tiny_config(), 81);
  auto state = model.initial_state(2);
  Sequence<float> logits;
  Tokens bad = random_tokens(2, 3, 64, 1);
  bad(1, 2) = 64;
  expect_error([&] { model.forward(bad, state, logits); },
               {"LargeModel::forward", "token id 64", "out of range [0, 64)"});
  bad(1, 2) = -1;
  expect_error([&] { model.forward(bad, state, logits); }, {"token id -1", "out of range"});
  expect_error([&] { model.forward(random_tokens(3, 4, 64, 2), state, logits); },
               {"LargeModel::forward", "batch 3", "batch 2"});
  expect_error([&] { model.forward(Tokens(2, 0), state, logits); }, {"at least one step"});
  Matrix<float> row(2, 64);
  expect_error(
      [&] {
        model.step(std::vector<std::int64_t>{1, 99}, state, row);
      },
      {"LargeModel::step", "token id 99", "out of range"});
  expect_error(
      [&] {
        model.step(std::vector<std::int64_t>{1, 2, 3}, state, row);
      },
      {"LargeModel::step", "batch 3", "batch 2"});
  Matrix<float> narrow(2, 10);
  expect_error(
      [&] {
        // A view of the wrong size (a Matrix output is resized, as forward does).
        model.step(std::vector<std::int64_t>{1, 2}, state, narrow.leftCols(10));
      },
      {"LargeModel::step", "'logits'", "2 x 64"});
  expect_error([&] { (void)model.initial_state(-1); }, {"batch"});

  xlstm::GenerateOptions options;
  expect_error(
      [&] {
        xlstm::generate(model, Outputs{{1, 200}}, options);
      },
      {"token id 200", "out of range"});
  options.temperature = -1;
  expect_error([&] { xlstm::generate(model, Outputs{{1}}, options); }, {"temperature"});
  options.temperature = 1;
  options.top_p = 0;
  expect_error([&] { xlstm::generate(model, Outputs{{1}}, options); }, {"top_p"});
  options.top_p = 1;
  options.top_k = -2;
  expect_error([&] { xlstm::generate(model, Outputs{{1}}, options); }, {"top_k"});
  options.top_k = 0;
  options.max_length = -1;
  expect_error([&] { xlstm::generate(model, Outputs{{1}}, options); }, {"max_length"});
}

TEST(LargeErrors, BadConfigs) {
  LargeModelConfig c = tiny_config();
  c.num_heads = 3;  // qk dim 32, v dim 64: neither divisible by 3
  expect_error([&] { LargeModel<float> m(c); },
               {"xLSTMLargeConfig", "qk dim", "= 32", "multiple of 'num_heads' (3)"});
  io::Json j = io::to_json(tiny_config());
  j["num_heads"] = 3;
  expect_error([&] { (void)io::large_model_config_from_json(j); }, {"qk dim", "'num_heads'"});
  c = tiny_config();
  c.v_dim_factor = 0.75;  // 48: fine for 2 heads
  c.num_heads = 32;       // qk 32 fine, v 48 not
  expect_error([&] { LargeModel<float> m(c); }, {"v dim", "= 48", "(32)"});
  c = tiny_config();
  c.weight_mode = "split";
  expect_error([&] { LargeModel<float> m(c); }, {"weight_mode", "split"});
  c = tiny_config();
  c.embedding_dim = 0;
  expect_error([&] { LargeModel<float> m(c); }, {"embedding_dim"});
  j = io::to_json(tiny_config());
  j["num_heads"] = "two";
  expect_error([&] { (void)io::large_model_config_from_json(j); }, {"num_heads", "wrong type"});
  expect_error([&] { (void)io::large_model_config_from_json(io::Json::array()); }, {"JSON object"});
}

TEST(LargeErrors, CheckpointProblemsAreListedTogether) {
  const LargeModelConfig config = tiny_config();
  const auto model = make_model<float>(config, 91);
  const std::string good = fresh("errors_good.safetensors");
  io::save_large_model(model, good);
  const auto source = io::SafetensorsFile::open(good);

  // Rewrite with one tensor missing, one misshaped, one extra and one integer.
  const std::string missing = "backbone.blocks.1.ffn.proj_down.weight";
  const std::string misshaped = "backbone.blocks.0.mlstm_layer.v.weight";
  const std::string integer = "backbone.blocks.0.norm_ffn.weight";
  const std::string extra = "backbone.blocks.0.mlstm_layer.extra.weight";
  io::SafetensorsWriter writer;
  for (const auto& name : source.names()) {
    if (name == missing) continue;
    auto values = source.read<float>(name);
    xlstm::Shape shape = source.info(name).shape;
    if (name == misshaped) {
      shape = {shape[0] - 1, shape[1]};
      values.resize(shape[0] * shape[1]);
    }
    if (name == integer) {
      const std::vector<std::int32_t> ints(values.size(), 1);
      writer.add(name, shape, ints.data());
      continue;
    }
    writer.add(name, shape, values.data());
  }
  const std::vector<float> junk(6, 0.5f);
  writer.add(extra, {2, 3}, junk.data());
  const std::string bad = fresh("errors_bad.safetensors");
  writer.save(bad);
  expect_error([&] { (void)io::load_large_model<float>(bad, config); },
               {bad, "does not match", "missing tensors (1)", missing + " [64, 192]",
                "misshaped tensors (1)", misshaped + ": expected [64, 64], file has [63, 64]",
                "unexpected tensors (1)", extra,
                "tensors with a dtype that is not F32/F64/BF16/F16 (1)", integer + " (I32)"});

  // Without a config the shapes decide; a missing tensor is still named.
  io::SafetensorsWriter partial;
  for (const auto& name : source.names()) {
    if (name == missing) continue;
    const auto values = source.read<float>(name);
    partial.add(name, source.info(name).shape, values.data());
  }
  const std::string partial_path = fresh("errors_partial.safetensors");
  partial.save(partial_path);
  expect_error([&] { (void)io::load_large_model<float>(partial_path); },
               {"missing tensors (1)", missing});

  // Not an xLSTM-Large checkpoint at all.
  io::SafetensorsWriter other;
  other.add("weight", {2, 3}, junk.data());
  const std::string other_path = fresh("errors_other.safetensors");
  other.save(other_path);
  expect_error([&] { (void)io::load_large_model<float>(other_path); },
               {"not an xLSTM-Large checkpoint"});

  // check_finite rejects NaN.
  io::SafetensorsWriter nan_writer;
  for (const auto& name : source.names()) {
    auto values = source.read<float>(name);
    if (name == "lm_head.weight") values[7] = std::numeric_limits<float>::quiet_NaN();
    nan_writer.add(name, source.info(name).shape, values.data());
  }
  const std::string nan_path = fresh("errors_nan.safetensors");
  nan_writer.save(nan_path);
  io::LargeLoadOptions finite;
  finite.check_finite = true;
  expect_error([&] { (void)io::load_large_model<float>(nan_path, config, finite); },
               {"tensors with NaN or infinite values (1)", "lm_head.weight"});
  EXPECT_NO_THROW((void)io::load_large_model<float>(nan_path, config));
}

TEST(LargeErrors, BrokenShardedCheckpoints) {
  const auto model = make_model<float>(tiny_config(), 92);
  const std::string dir = fresh("errors_sharded");
  io::save_large_model(model, dir, io::LargeNaming::official, false, std::nullopt, 3, true);
  ASSERT_NO_THROW((void)io::load_large_model<float>(dir));

  // The index points at a shard that is not there.
  fs::remove(fs::path(dir) / "model-2-of-3.safetensors");
  expect_error([&] { (void)io::load_large_model<float>(dir); },
               {"model-2-of-3.safetensors", "cannot open"});

  // The index says a tensor is in a shard that does not hold it.
  const std::string moved = fresh("errors_sharded_moved");
  io::save_large_model(model, moved, io::LargeNaming::official, false, std::nullopt, 3, true);
  const auto index_path = (fs::path(moved) / "model.safetensors.index.json").string();
  io::Json index = io::read_json_file(index_path);
  const std::string where = index["weight_map"]["lm_head.weight"].get<std::string>();
  index["weight_map"]["lm_head.weight"] =
      where == "model-1-of-3.safetensors" ? "model-2-of-3.safetensors" : "model-1-of-3.safetensors";
  std::ofstream(index_path) << index.dump(2);
  expect_error([&] { (void)io::load_large_model<float>(moved); },
               {"model.safetensors.index.json", "'lm_head.weight'", "does not hold it"});

  // A shard name that escapes the directory.
  index["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors";
  std::ofstream(index_path) << index.dump(2);
  expect_error([&] { (void)io::load_large_model<float>(moved); }, {"plain file name"});

  // A directory with no checkpoint.
  const std::string empty = fresh("errors_empty_dir");
  fs::create_directories(empty);
  expect_error([&] { (void)io::load_large_model<float>(empty); },
               {"neither model.safetensors.index.json nor model.safetensors"});
  expect_error([&] { (void)io::load_large_model<float>(empty + "/nothing.safetensors"); },
               {"nothing.safetensors"});
}

// ---------------------------------------------------------------------------
// 7. Config JSON

TEST(LargeConfig, GoldenConfigRoundTrip) {
  const auto file = io::SafetensorsFile::open(
      std::string(XLSTM_TEST_DATA_DIR) + "/golden/xlstm_large_d64_nh2_nb2_t24.f32.safetensors");
  const io::Json original = io::Json::parse(file.metadata().at("config"));
  const LargeModelConfig c = io::large_model_config_from_json(original);
  EXPECT_EQ(c.embedding_dim, 64);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.num_blocks, 2);
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.chunk_size, 16);
  EXPECT_EQ(c.mode, "inference");
  EXPECT_TRUE(c.return_last_states);
  EXPECT_EQ(c.chunkwise_kernel, "chunkwise--native_autograd");
  EXPECT_EQ(c.step_kernel, "native");
  EXPECT_EQ(c.qk_dim(), 32);
  EXPECT_EQ(c.v_dim(), 64);
  EXPECT_EQ(c.ffn_dim(), 192);  // 64 * 2.6667 = 170.67 -> 192
  EXPECT_EQ(c.gate_soft_cap, 15.0);
  EXPECT_EQ(c.output_logit_soft_cap, 30.0);
  EXPECT_EQ(c.norm_eps, 1e-6);
  EXPECT_EQ(c.eps, 1e-6);
  EXPECT_EQ(c.weight_mode, "single");

  // to_json writes the official fields back, exactly.
  const io::Json written = io::to_json(c);
  EXPECT_EQ(written, original) << written.dump(1) << "\nvs\n" << original.dump(1);
  const LargeModelConfig again = io::large_model_config_from_json(written);
  EXPECT_EQ(io::to_json(again), written);

  // The golden model's parameters load with this config (prefix "param.").
  io::LargeLoadOptions options;
  options.prefix = "param.";
  const auto model = io::load_large_model<float>(io::CheckpointFiles::from_file(file), c, options);
  EXPECT_EQ(model.blocks().size(), 2u);
  EXPECT_EQ(io::infer_large_model_config(io::CheckpointFiles::from_file(file), "param.").ffn_dim(),
            192);
}

TEST(LargeConfig, HuggingFaceNamesNullCapsAndRounding) {
  const io::Json hf = {{"hidden_size", 128},       {"num_hidden_layers", 3},
                       {"num_heads", 4},           {"vocab_size", 100},
                       {"gate_soft_cap", nullptr}, {"output_logit_soft_cap", nullptr},
                       {"ffn_proj_factor", 2.667}};
  const LargeModelConfig c = io::large_model_config_from_json(hf);
  EXPECT_EQ(c.embedding_dim, 128);
  EXPECT_EQ(c.num_blocks, 3);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.gate_soft_cap, 0.0);  // None: no cap
  EXPECT_EQ(c.output_logit_soft_cap, 0.0);
  EXPECT_EQ(c.mode, "train");  // official default
  const io::Json back = io::to_json(c);
  EXPECT_TRUE(back["gate_soft_cap"].is_null());
  EXPECT_TRUE(back["output_logit_soft_cap"].is_null());
  EXPECT_EQ(back["embedding_dim"], 128);
  EXPECT_EQ(back["num_blocks"], 3);

  // A model without caps runs, and its logits are not capped.
  LargeModelConfig uncapped = tiny_config();
  uncapped.gate_soft_cap = 0;
  uncapped.output_logit_soft_cap = 0;
  auto model = make_model<double>(uncapped, 5);
  xlstm::weight_matrices(model).back()->native() *= 1000.0;  // the LM head
  EXPECT_GT(logits_of(model, random_tokens(1, 4, 64, 1)).matrix().cwiseAbs().maxCoeff(), 30.0);

  // The 7B sizes and the rounding quirk of round_up_to_next_multiple_of.
  LargeModelConfig big;
  big.embedding_dim = 4096;
  big.num_heads = 8;
  big.num_blocks = 32;
  big.vocab_size = 50304;
  EXPECT_EQ(big.ffn_dim(), 10944);  // 4096 * 2.6667 = 10922.8 -> 10944
  EXPECT_EQ(big.qk_dim(), 2048);
  EXPECT_EQ(big.v_dim(), 4096);
  big.ffn_proj_factor = 2.667;  // HF: 10924.03 -> 10944
  EXPECT_EQ(big.ffn_dim(), 10944);
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(1024.5, 64), 1024);  // not 1088
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(1025.0, 64), 1088);
  EXPECT_EQ(xlstm::round_up_to_next_multiple_of(1024.0, 64), 1024);
}

}  // namespace

}  // namespace xlstm_test_large
