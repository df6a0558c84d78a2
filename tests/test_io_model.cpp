// Configs, checkpoints and saved states of the NeurIPS model:
//
// * config JSON (math §6.1): the golden files' `config` metadata parses, stale
//   derived fields are recomputed, to_json round-trips, invalid configs are
//   rejected with the offending field named;
// * checkpoints (math §7.1, §2.2): bit-exact save/load, one error listing every
//   problem with the module left untouched, BF16/F16/F64 files, the sLSTM CUDA
//   layout, the sLSTM fgate/igate name swap, key prefixes, tied weights,
//   non-finite weights;
// * recurrent states (golden README §5.7): save, restore and continue; a wrong
//   file leaves the state untouched.
//
// Most comparisons here are exact: loading copies (or converts) numbers, and
// identical parameters and states give identical outputs. Where a tolerance is
// used, its derivation is next to it.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/dtype.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/state_io.hpp"
#include "xlstm/model/language_model.hpp"

#include "test_util.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_io_model {

namespace {

using test_util::BitIdentical;
using test_util::random_tokens;
using test_util::randomize;
using test_util::TempPath;
using test_util::ThrowsMentioning;
using xlstm::BlockStackConfig;
using xlstm::Index;
using xlstm::LanguageModel;
using xlstm::LanguageModelConfig;
using xlstm::Matrix;
using xlstm::ParameterList;
using xlstm::Sequence;
using xlstm::Shape;
using xlstm::SLstmBlock;
using xlstm::Tokens;
using xlstm::io::DType;
using xlstm::io::Json;
using xlstm::io::LoadOptions;
using xlstm::io::SafetensorsFile;
using xlstm::io::SafetensorsWriter;

using test_util::Scalars;

const std::string kDataDir = XLSTM_TEST_DATA_DIR;
const std::string kLmFile = kDataDir + "/golden/lm_step_v50_d32_nb3_t16.f32.safetensors";
const std::string kStackFile = kDataDir + "/golden/block_stack_d48_nb3_s1_t32.f32.safetensors";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// Every parameter of a module by name: shape and a copy of the values.
template <typename S>
struct Tensor {
  Shape shape;
  std::vector<S> values;
};
template <typename S>
using TensorMap = std::map<std::string, Tensor<S>>;

template <typename Module>
TensorMap<typename Module::Scalar> tensors_of(Module& module, const std::string& prefix = "") {
  ParameterList<typename Module::Scalar> list;
  list = xlstm::parameter_list(module, prefix);
  TensorMap<typename Module::Scalar> map;
  for (const auto& p : list) {
    map[p.name] = {p.shape, {p.data, p.data + xlstm::shape_product(p.shape)}};
  }
  return map;
}

// A safetensors file (in memory) holding `tensors` converted to `dtype`.
template <typename S>
SafetensorsFile file_of(const TensorMap<S>& tensors, DType dtype) {
  SafetensorsWriter writer;
  for (const auto& [name, t] : tensors) writer.add_as(name, dtype, t.shape, t.values.data());
  return SafetensorsFile::from_bytes(writer.to_bytes(), "test checkpoint");
}
template <typename S>
SafetensorsFile file_of(const TensorMap<S>& tensors) {
  return file_of(tensors, xlstm::io::dtype_of<S>());
}

// Same names, shapes and bytes (NaN and -0 compare by their bits).
template <typename S>
::testing::AssertionResult BitIdentical(const TensorMap<S>& a, const TensorMap<S>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << a.size() << " vs " << b.size();
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end()) return ::testing::AssertionFailure() << "no " << name;
    if (t.shape != it->second.shape) return ::testing::AssertionFailure() << "shape of " << name;
    if (std::memcmp(t.values.data(), it->second.values.data(), t.values.size() * sizeof(S)) != 0) {
      return ::testing::AssertionFailure() << "values of " << name << " differ";
    }
  }
  return ::testing::AssertionSuccess();
}

template <typename S>
Matrix<S> logits_of(const LanguageModel<S>& model, const Tokens& tokens) {
  auto state = model.initial_state(tokens.rows());
  Sequence<S> logits;
  model.forward(tokens, state, logits);
  return logits.matrix();
}

// Steps tokens[:, t] for all t, logits stacked as (T*B) x V.
template <typename S>
Matrix<S> step_logits(const LanguageModel<S>& model, const Tokens& tokens,
                      typename LanguageModel<S>::State& state) {
  const Index batch = tokens.rows(), time = tokens.cols();
  Matrix<S> all(batch * time, model.vocab_size()), step(batch, model.vocab_size());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(batch));
  for (Index t = 0; t < time; ++t) {
    for (Index b = 0; b < batch; ++b) ids[std::size_t(b)] = tokens(b, t);
    model.step(ids, state, step);
    all.middleRows(t * batch, batch) = step;
  }
  return all;
}

// A small mixed model: E = 16, blocks "0,1,0" (or as given), two heads each
// (sLSTM DH = 8, so the CUDA and vanilla layouts really differ), vocab 20.
LanguageModelConfig small_lm_config(std::vector<Index> slstm_at = {1}, bool tie = false) {
  auto c = test_util::lm_config(16, 3, std::move(slstm_at), 20, 8, /*num_heads=*/2);
  c.tie_weights = tie;
  return c;
}

Json golden_config(const std::string& path) {
  return Json::parse(SafetensorsFile::open(path).metadata().at("config"));
}

// ---------------------------------------------------------------------------
// Config JSON
// ---------------------------------------------------------------------------

TEST(ConfigJson, LanguageModelConfigOfGoldenFileRecomputesDerivedFields) {
  const Json j = golden_config(kLmFile);
  // The file carries the stale per-block values of math §6.1.
  ASSERT_EQ(j.at("slstm_block").at("feedforward").at("embedding_dim"), -1);
  ASSERT_EQ(j.at("slstm_block").at("feedforward").at("_proj_up_dim"), 0);
  ASSERT_EQ(j.at("slstm_block").at("feedforward").at("_num_blocks"), 1);

  const LanguageModelConfig c = xlstm::io::language_model_config_from_json(j);
  EXPECT_EQ(c.vocab_size, 50);
  EXPECT_EQ(c.embedding_dim, 32);
  EXPECT_EQ(c.num_blocks, 3);
  EXPECT_EQ(c.context_length, 16);
  ASSERT_TRUE(c.mlstm_block && c.slstm_block && c.slstm_block->feedforward);
  const auto& ffn = *c.slstm_block->feedforward;
  EXPECT_EQ(ffn.embedding_dim, 32);
  EXPECT_EQ(ffn._proj_up_dim, 64);  // ceil(1.3 * 32 / 64) * 64
  EXPECT_EQ(ffn._num_blocks, 3);
  EXPECT_EQ(c.mlstm_block->mlstm._inner_embedding_dim, 64);  // ceil(2 * 32 / 64) * 64
  EXPECT_EQ(c.mlstm_block->mlstm.context_length, 16);
  EXPECT_EQ(c.slstm_block->slstm.hidden_size, 32);
  EXPECT_EQ(c.block_map_string(), j.at("_block_map").get<std::string>());

  // The model built from it has exactly the file's parameters.
  LanguageModel<float> model(c);
  EXPECT_NO_THROW(xlstm::io::load_module(model, SafetensorsFile::open(kLmFile), {"param."}));
}

TEST(ConfigJson, BlockStackConfigOfGoldenFileRecomputesDerivedFields) {
  const Json j = golden_config(kStackFile);
  const BlockStackConfig c = xlstm::io::block_stack_config_from_json(j);
  EXPECT_EQ(c.embedding_dim, 48);
  ASSERT_TRUE(c.mlstm_block && c.slstm_block && c.slstm_block->feedforward);
  EXPECT_EQ(c.slstm_block->feedforward->embedding_dim, 48);
  EXPECT_EQ(c.slstm_block->feedforward->_proj_up_dim, 64);    // ceil(62.4 / 64) * 64
  EXPECT_EQ(c.mlstm_block->mlstm._inner_embedding_dim, 128);  // ceil(96 / 64) * 64
  EXPECT_EQ(c.block_map_string(), j.at("_block_map").get<std::string>());
  xlstm::BlockStack<float> stack(c);
  EXPECT_NO_THROW(xlstm::io::load_module(stack, SafetensorsFile::open(kStackFile), {"param."}));
}

TEST(ConfigJson, WrongDerivedFieldsInTheFileAreIgnored) {
  Json j = golden_config(kLmFile);
  j["mlstm_block"]["mlstm"]["_inner_embedding_dim"] = 999;
  j["mlstm_block"]["mlstm"]["_proj_up_dim"] = 999;
  j["slstm_block"]["slstm"]["hidden_size"] = 7;
  j["_block_map"] = "1,1,1";
  const auto c = xlstm::io::language_model_config_from_json(j);
  EXPECT_EQ(c.mlstm_block->mlstm._inner_embedding_dim, 64);
  EXPECT_EQ(c.slstm_block->slstm.hidden_size, 32);
  EXPECT_EQ(c.block_map_string(), "0,1,0");  // from slstm_at, not from _block_map
}

TEST(ConfigJson, ToJsonThenParseGivesTheSameConfig) {
  const auto lm = xlstm::io::language_model_config_from_json(golden_config(kLmFile));
  const Json lm_json = xlstm::io::to_json(lm);
  const auto lm_again = xlstm::io::language_model_config_from_json(Json::parse(lm_json.dump()));
  EXPECT_EQ(xlstm::io::to_json(lm_again), lm_json);
  EXPECT_EQ(lm_json.at("_block_map"), "0,1,0");

  const auto stack = xlstm::io::block_stack_config_from_json(golden_config(kStackFile));
  const Json stack_json = xlstm::io::to_json(stack);
  EXPECT_EQ(
      xlstm::io::to_json(xlstm::io::block_stack_config_from_json(Json::parse(stack_json.dump()))),
      stack_json);

  // Non-default values survive too.
  auto custom = small_lm_config({0, 2}, /*tie=*/true);
  custom.slstm_block->feedforward->act_fn = "relu^2";
  custom.slstm_block->slstm.conv1d_kernel_size = 0;
  custom.mlstm_block->mlstm.qkv_proj_blocksize = 8;
  custom.post_init();
  const Json custom_json = xlstm::io::to_json(custom);
  const auto parsed = xlstm::io::language_model_config_from_json(custom_json);
  EXPECT_EQ(xlstm::io::to_json(parsed), custom_json);
  EXPECT_TRUE(parsed.tie_weights);
  EXPECT_EQ(parsed.slstm_block->feedforward->act_fn, "relu^2");
  EXPECT_EQ(parsed.block_map_string(), "1,0,1");
}

TEST(ConfigJson, SlstmAtAllMeansEveryBlock) {
  Json j = golden_config(kLmFile);
  j["slstm_at"] = "all";
  EXPECT_EQ(xlstm::io::language_model_config_from_json(j).block_map_string(), "1,1,1");
  j = golden_config(kLmFile);
  j["mlstm_block"] = nullptr;  // no mLSTM config: every block is sLSTM (math §6.1)
  EXPECT_EQ(xlstm::io::language_model_config_from_json(j).block_map_string(), "1,1,1");
}

// Sets `pointer` in the golden LM config to `value` and expects an Error
// whose message contains every needle.
::testing::AssertionResult RejectsLm(const std::string& pointer, const Json& value,
                                     std::initializer_list<std::string> needles) {
  Json j = golden_config(kLmFile);
  j[Json::json_pointer(pointer)] = value;
  auto result = ThrowsMentioning([&] { xlstm::io::language_model_config_from_json(j); }, needles);
  if (!result) result << " (" << pointer << " = " << value.dump() << ")";
  return result;
}

TEST(ConfigJson, EmbeddingDimNotDivisibleByHeadsIsRejected) {
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm/num_heads", 5, {"embedding_dim", "num_heads"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm/num_heads", 3, {"embedding_dim", "num_heads"}));
  // mLSTM heads split the inner dimension (64 here).
  EXPECT_TRUE(RejectsLm("/mlstm_block/mlstm/num_heads", 3, {"num_heads"}));
  EXPECT_TRUE(RejectsLm("/mlstm_block/mlstm/qkv_proj_blocksize", 5, {"qkv_proj_blocksize"}));
}

TEST(ConfigJson, NonPositiveSizesAreRejected) {
  EXPECT_TRUE(RejectsLm("/embedding_dim", 0, {"embedding_dim"}));
  EXPECT_TRUE(RejectsLm("/embedding_dim", -32, {"embedding_dim"}));
  EXPECT_TRUE(RejectsLm("/num_blocks", 0, {"num_blocks"}));
  EXPECT_TRUE(RejectsLm("/vocab_size", 0, {"vocab_size"}));
  EXPECT_TRUE(RejectsLm("/vocab_size", -1, {"vocab_size"}));
  EXPECT_TRUE(RejectsLm("/mlstm_block/mlstm/num_heads", 0, {"num_heads"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm/num_heads", -4, {"num_heads"}));
  EXPECT_TRUE(RejectsLm("/mlstm_block/mlstm/qkv_proj_blocksize", 0, {"qkv_proj_blocksize"}));
  EXPECT_TRUE(RejectsLm("/mlstm_block/mlstm/proj_factor", 0.0, {"proj_factor"}));
  EXPECT_TRUE(RejectsLm("/mlstm_block/mlstm/conv1d_kernel_size", 0, {"conv1d_kernel_size"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm/conv1d_kernel_size", -1, {"conv1d_kernel_size"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/feedforward/proj_factor", -1.0, {"proj_factor"}));
}

TEST(ConfigJson, SlstmAtOutOfRangeIsRejected) {
  EXPECT_TRUE(RejectsLm("/slstm_at", Json::array({3}), {"slstm_at", "3", "out of range"}));
  EXPECT_TRUE(RejectsLm("/slstm_at", Json::array({1, -1}), {"slstm_at", "-1"}));
  Json j = golden_config(kLmFile);
  j["slstm_block"] = nullptr;  // sLSTM placed at 1 but not configured
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::io::language_model_config_from_json(j); }, {"slstm_block"}));
}

TEST(ConfigJson, UnknownNamesAreRejected) {
  EXPECT_TRUE(RejectsLm("/slstm_block/feedforward/act_fn", "tanh", {"act_fn", "tanh"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm/function", "gru", {"function", "gru"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm/bias_init", "ones", {"bias_init"}));
  EXPECT_TRUE(RejectsLm("/slstm_at", "some", {"slstm_at"}));
}

TEST(ConfigJson, WrongJsonTypesAreRejectedNamingTheField) {
  EXPECT_TRUE(RejectsLm("/embedding_dim", "32", {"'embedding_dim'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/num_blocks", 2.5, {"'num_blocks'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/num_blocks", 1e300, {"'num_blocks'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/num_blocks", -1e300, {"'num_blocks'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/tie_weights", 1, {"'tie_weights'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/mlstm_block/mlstm/proj_factor", "2.0",
                        {"'mlstm_block.mlstm.proj_factor'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm/num_heads", 4.5,
                        {"'slstm_block.slstm.num_heads'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/feedforward/act_fn", 3,
                        {"'slstm_block.feedforward.act_fn'", "wrong type"}));
  EXPECT_TRUE(RejectsLm("/slstm_at", Json::array({1.5}), {"slstm_at"}));
  EXPECT_TRUE(RejectsLm("/slstm_at", 1, {"slstm_at"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/slstm", "x", {"slstm_block.slstm"}));
  EXPECT_TRUE(RejectsLm("/slstm_block/feedforward", 3, {"slstm_block.feedforward"}));
  EXPECT_TRUE(RejectsLm("/mlstm_block", Json::array(), {"mlstm_block"}));
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::io::language_model_config_from_json(Json::array()); },
                               {"object"}));
  // Integral floats are what Python writes for some ints; they are accepted.
  Json j = golden_config(kLmFile);
  j["num_blocks"] = 3.0;
  EXPECT_EQ(xlstm::io::language_model_config_from_json(j).num_blocks, 3);
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

template <typename S>
class CheckpointTest : public ::testing::Test {};
TYPED_TEST_SUITE(CheckpointTest, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(CheckpointTest, SaveLoadRoundTripIsBitExact) {
  using S = TypeParam;
  LanguageModel<S> model(small_lm_config());
  randomize(model, 1);
  TempPath path("model");
  xlstm::io::save_module(model, path.str());

  const auto file = SafetensorsFile::open(path.str());
  const auto saved = tensors_of(model);
  EXPECT_EQ(file.size(), saved.size());
  for (const auto& [name, t] : saved) {
    ASSERT_TRUE(file.contains(name)) << name;
    EXPECT_EQ(file.info(name).dtype, xlstm::io::dtype_of<S>()) << name;
    EXPECT_EQ(file.info(name).shape, t.shape) << name;
  }
  LanguageModel<S> loaded(small_lm_config());
  xlstm::io::load_module(loaded, file);
  EXPECT_TRUE(BitIdentical(tensors_of(loaded), saved));
  const Tokens tokens = random_tokens(2, 6, 20, 5);
  EXPECT_TRUE(BitIdentical(logits_of(loaded, tokens), logits_of(model, tokens)));
}

TYPED_TEST(CheckpointTest, MissingExtraAndMisshapedAreReportedTogetherAndNothingIsWritten) {
  using S = TypeParam;
  LanguageModel<S> source(small_lm_config());
  randomize(source, 2);
  auto tensors = tensors_of(source);
  const std::string missing = "xlstm_block_stack.blocks.0.xlstm.proj_up.weight";
  const std::string extra = "xlstm_block_stack.blocks.0.xlstm.extra.weight";
  const std::string misshaped = "xlstm_block_stack.post_blocks_norm.weight";
  ASSERT_EQ(tensors.erase(missing), 1u);
  tensors[extra] = {{3}, {S(1), S(2), S(3)}};
  tensors[misshaped] = {{17}, std::vector<S>(17, S(0.5))};

  LanguageModel<S> target(small_lm_config());
  randomize(target, 3);
  const auto before = tensors_of(target);
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::io::load_module(target, file_of(tensors)); },
                               {missing, extra, misshaped, "[17]", "[16]"}));
  EXPECT_TRUE(BitIdentical(tensors_of(target), before));

  // allow_unexpected tolerates only the extra tensor.
  LoadOptions lenient;
  lenient.allow_unexpected = true;
  tensors.erase(misshaped);
  tensors[missing] = tensors_of(source).at(missing);
  tensors[misshaped] = tensors_of(source).at(misshaped);
  EXPECT_NO_THROW(xlstm::io::load_module(target, file_of(tensors), lenient));
  EXPECT_TRUE(BitIdentical(tensors_of(target), tensors_of(source)));
}

// Stored 16-bit floats convert exactly; the only difference to the original
// weights is the rounding to 16 bits when the file was written: relative
// error <= 2^-8 for BF16 (8 significant bits), <= 2^-11 for F16 (11 bits),
// plus half the F16 subnormal spacing (2^-25) for tiny values.
TYPED_TEST(CheckpointTest, Bf16AndF16CheckpointsLoadWithinTheirRounding) {
  using S = TypeParam;
  LanguageModel<S> source(small_lm_config());
  randomize(source, 4);
  const auto original = tensors_of(source);
  struct Case {
    DType dtype;
    double relative, absolute;
  };
  for (const Case c : {Case{DType::BF16, std::ldexp(1.0, -8), 0.0},
                       Case{DType::F16, std::ldexp(1.0, -11), std::ldexp(1.0, -25)}}) {
    LanguageModel<S> target(small_lm_config());
    xlstm::io::load_module(target, file_of(original, c.dtype));
    std::size_t changed = 0;
    for (const auto& [name, t] : tensors_of(target)) {
      const auto& ref = original.at(name).values;
      for (std::size_t i = 0; i < ref.size(); ++i) {
        const double x = double(ref[i]), y = double(t.values[i]);
        ASSERT_LE(std::abs(y - x), c.relative * std::abs(x) + c.absolute)
            << xlstm::io::dtype_name(c.dtype) << " " << name << "[" << i << "]";
        changed += y != x;
      }
    }
    EXPECT_GT(changed, 0u) << "the values really went through 16 bits";
  }
}

TEST(Checkpoint, F64CheckpointLoadsIntoFloatModelByRounding) {
  LanguageModel<double> source(small_lm_config());
  randomize(source, 5);
  const auto original = tensors_of(source);
  LanguageModel<float> target(small_lm_config());
  xlstm::io::load_module(target, file_of(original));
  for (const auto& [name, t] : tensors_of(target)) {
    const auto& ref = original.at(name).values;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      ASSERT_EQ(t.values[i], static_cast<float>(ref[i])) << name << "[" << i << "]";
    }
  }
}

// math §2.2: Rc[h, i, g*DH + j] = Rv[h, g*DH + j, i];
//            bc[h*4DH + g*DH + j] = bv[g*H + h*DH + j].
template <typename S>
void to_cuda_layout(TensorMap<S>& tensors) {
  for (auto& [name, t] : tensors) {
    const std::string suffix = "_recurrent_kernel_";
    if (name.size() < suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::size_t nh = t.shape[0], four_dh = t.shape[1], dh = t.shape[2], h_size = nh * dh;
    Tensor<S> kernel{{nh, dh, four_dh}, std::vector<S>(t.values.size())};
    for (std::size_t h = 0; h < nh; ++h)
      for (std::size_t i = 0; i < dh; ++i)
        for (std::size_t o = 0; o < four_dh; ++o)
          kernel.values[(h * dh + i) * four_dh + o] = t.values[(h * four_dh + o) * dh + i];
    auto& bias = tensors.at(name.substr(0, name.size() - suffix.size()) + "_bias_");
    std::vector<S> head_major(bias.values.size());
    for (std::size_t h = 0; h < nh; ++h)
      for (std::size_t g = 0; g < 4; ++g)
        for (std::size_t j = 0; j < dh; ++j)
          head_major[h * four_dh + g * dh + j] = bias.values[g * h_size + h * dh + j];
    t = kernel;
    bias.values = head_major;
  }
}

TYPED_TEST(CheckpointTest, CudaLayoutSlstmCheckpointLoadsToTheSameModel) {
  using S = TypeParam;
  LanguageModel<S> source(small_lm_config({0, 2}));  // two sLSTM blocks
  randomize(source, 6);
  auto cuda = tensors_of(source);
  to_cuda_layout(cuda);
  ASSERT_EQ(cuda.at("xlstm_block_stack.blocks.2.xlstm.slstm_cell._recurrent_kernel_").shape,
            (Shape{2, 8, 32}));
  LanguageModel<S> target(small_lm_config({0, 2}));
  xlstm::io::load_module(target, file_of(cuda));
  EXPECT_TRUE(BitIdentical(tensors_of(target), tensors_of(source)));
  const Tokens tokens = random_tokens(2, 5, 20, 6);
  EXPECT_TRUE(BitIdentical(logits_of(target, tokens), logits_of(source, tokens)));
}

// math §3.2 quirk: the tensor named "xlstm.fgate.weight" feeds the cell's
// INPUT gate. From the zero state the first step sets m = raw_i (math §2.4),
// so the cell's m after one step shows the input-gate pre-activation; the
// forget gate only acts from the second step on.
TEST(Checkpoint, SlstmTensorNamedFgateDrivesTheInputGate) {
  using S = double;
  const auto config = test_util::slstm_block_config(8, 2);
  SLstmBlock<S> block(config);
  randomize(block, 7, 0.3);
  const auto params = tensors_of(block);
  const Index e = 8, dh = 4, k = 4;

  Matrix<S> x(2, e);
  std::mt19937_64 rng(8);
  std::normal_distribution<double> dist;
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = dist(rng);

  // Hand computation of raw_i = W_fgate silu(conv(LN(x))) + b_i at step 1.
  const auto& norm_w = params.at("xlstm_norm.weight").values;
  const auto& conv_w = params.at("xlstm.conv1d.conv.weight").values;  // (E, 1, K)
  const auto& conv_b = params.at("xlstm.conv1d.conv.bias").values;
  const auto& w_named_fgate = params.at("xlstm.fgate.weight").values;  // (NH, DH, DH)
  const auto& bias = params.at("xlstm.slstm_cell._bias_").values;      // gate-major, i first
  Matrix<S> raw_i(2, e);
  for (Index b = 0; b < 2; ++b) {
    const double mean = x.row(b).mean();
    const double var = (x.row(b).array() - mean).square().mean();
    std::vector<double> conv_act(e);
    for (Index c = 0; c < e; ++c) {
      const double normed = (x(b, c) - mean) / std::sqrt(var + 1e-5) * (1 + norm_w[c]);
      // The window is [0, 0, 0, normed]: only the last tap sees an input.
      const double pre = conv_b[c] + conv_w[c * k + (k - 1)] * normed;
      conv_act[c] = pre / (1 + std::exp(-pre));
    }
    for (Index h = 0; h < 2; ++h) {
      for (Index o = 0; o < dh; ++o) {
        double sum = bias[h * dh + o];
        for (Index d = 0; d < dh; ++d)
          sum += w_named_fgate[(h * dh + o) * dh + d] * conv_act[h * dh + d];
        raw_i(b, h * dh + o) = sum;
      }
    }
  }

  auto run = [&](SLstmBlock<S>& module, Index steps) {
    auto state = module.initial_state(2);
    Matrix<S> y(2, e);
    for (Index t = 0; t < steps; ++t) module.step(x, state, y);
    return state.cell;
  };
  // A few operations on values of order 1 in double: 1e-12 is ~1e4 ulp.
  const auto original = run(block, 1);
  EXPECT_LE((original.m - raw_i).cwiseAbs().maxCoeff(), 1e-12);

  auto with_zeroed = [&](const std::string& name) {
    auto tensors = params;
    std::fill(tensors.at(name).values.begin(), tensors.at(name).values.end(), S(0));
    SLstmBlock<S> modified(config);
    xlstm::io::load_module(modified, file_of(tensors));
    return modified;
  };
  // Zeroing the tensor named "fgate" removes the projection from raw_i ...
  auto no_fgate = with_zeroed("xlstm.fgate.weight");
  Matrix<S> bias_i(2, e);
  for (Index b = 0; b < 2; ++b)
    for (Index c = 0; c < e; ++c) bias_i(b, c) = bias[c];
  EXPECT_LE((run(no_fgate, 1).m - bias_i).cwiseAbs().maxCoeff(), 1e-15);
  // ... zeroing the one named "igate" leaves step 1 alone and changes the
  // forget gate, visible from step 2 on.
  auto no_igate = with_zeroed("xlstm.igate.weight");
  EXPECT_TRUE(BitIdentical(run(no_igate, 1).m, original.m));
  EXPECT_GT((run(no_igate, 2).c - run(block, 2).c).cwiseAbs().maxCoeff(), 1e-6);
}

TEST(Checkpoint, PrefixSelectsTheModuleKeys) {
  using S = float;
  LanguageModel<S> source(small_lm_config());
  randomize(source, 9);
  auto tensors = tensors_of(source, "model.");
  tensors["optimizer.step"] = {{1}, {S(100)}};  // outside the prefix: ignored
  const auto file = file_of(tensors);

  LanguageModel<S> target(small_lm_config());
  LoadOptions options;
  options.prefix = "model.";
  xlstm::io::load_module(target, file, options);
  EXPECT_TRUE(BitIdentical(tensors_of(target), tensors_of(source)));

  LanguageModel<S> unprefixed(small_lm_config());
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::io::load_module(unprefixed, file); },
                               {"missing", "token_embedding.weight", "unexpected",
                                "model.token_embedding.weight", "optimizer.step"}));

  // The saving side: add_module with a prefix writes the same names.
  SafetensorsWriter writer;
  xlstm::io::add_module(writer, source, "model.");
  const auto written = SafetensorsFile::from_bytes(writer.to_bytes());
  EXPECT_TRUE(written.contains("model.xlstm_block_stack.blocks.1.xlstm.slstm_cell._bias_"));
  LanguageModel<S> again(small_lm_config());
  xlstm::io::load_module(again, written, options);
  EXPECT_TRUE(BitIdentical(tensors_of(again), tensors_of(source)));
}

TYPED_TEST(CheckpointTest, TiedWeightsModelLoadsAFileWithBothKeys) {
  using S = TypeParam;
  LanguageModel<S> source(small_lm_config({1}, /*tie=*/true));
  randomize(source, 10);
  EXPECT_EQ(&source.lm_head(), &source.embedding());
  TempPath path("tied");
  xlstm::io::save_module(source, path.str());
  const auto file = SafetensorsFile::open(path.str());
  ASSERT_TRUE(file.contains("token_embedding.weight"));
  ASSERT_TRUE(file.contains("lm_head.weight"));  // the official state_dict has both
  EXPECT_EQ(file.read<S>("lm_head.weight"), file.read<S>("token_embedding.weight"));

  LanguageModel<S> target(small_lm_config({1}, /*tie=*/true));
  xlstm::io::load_module(target, file);
  EXPECT_TRUE(BitIdentical(target.embedding(), source.embedding()));
  const Tokens tokens = random_tokens(1, 4, 20, 10);
  EXPECT_TRUE(BitIdentical(logits_of(target, tokens), logits_of(source, tokens)));
}

TYPED_TEST(CheckpointTest, CheckFiniteRejectsNanAndInfiniteWeights) {
  using S = TypeParam;
  LanguageModel<S> source(small_lm_config());
  randomize(source, 11);
  auto tensors = tensors_of(source);
  const std::string nan_name = "xlstm_block_stack.blocks.0.xlstm.proj_up.weight";
  const std::string inf_name = "xlstm_block_stack.blocks.1.xlstm.slstm_cell._bias_";
  tensors.at(nan_name).values[5] = std::numeric_limits<S>::quiet_NaN();
  tensors.at(inf_name).values[0] = -std::numeric_limits<S>::infinity();
  const auto file = file_of(tensors);

  LanguageModel<S> target(small_lm_config());
  randomize(target, 12);
  const auto before = tensors_of(target);
  LoadOptions strict;
  strict.check_finite = true;
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::io::load_module(target, file, strict); },
                               {"NaN", nan_name, inf_name}));
  EXPECT_TRUE(BitIdentical(tensors_of(target), before));
  // Without the check the values are taken as they are.
  xlstm::io::load_module(target, file);
  EXPECT_TRUE(std::isnan(tensors_of(target).at(nan_name).values[5]));
}

// ---------------------------------------------------------------------------
// Recurrent states
// ---------------------------------------------------------------------------

template <typename S>
class StateIoTest : public ::testing::Test {};
TYPED_TEST_SUITE(StateIoTest, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(StateIoTest, RestoredStateContinuesExactlyLikeTheOriginal) {
  using S = TypeParam;
  LanguageModel<S> model(small_lm_config());
  randomize(model, 13);
  auto state = model.initial_state(2);
  Sequence<S> logits;
  model.forward(random_tokens(2, 10, 20, 13), state, logits);

  TempPath path("state");
  xlstm::io::save_state(state, path.str());
  const auto file = SafetensorsFile::open(path.str());
  // golden README §5.7 names and shapes (mLSTM: I = 64, NH = 2, DH = 32; sLSTM E = 16).
  EXPECT_EQ(file.info("block_0.mlstm_state.0").shape, (Shape{2, 2, 32, 32}));
  EXPECT_EQ(file.info("block_0.mlstm_state.1").shape, (Shape{2, 2, 32, 1}));
  EXPECT_EQ(file.info("block_0.mlstm_state.2").shape, (Shape{2, 2, 1, 1}));
  EXPECT_EQ(file.info("block_0.conv_state.0").shape, (Shape{2, 4, 64}));
  EXPECT_EQ(file.info("block_1.slstm_state").shape, (Shape{4, 2, 16}));
  EXPECT_EQ(file.info("block_1.conv_state.0").shape, (Shape{2, 4, 16}));

  auto restored = model.initial_state(2);
  xlstm::io::load_state(restored, path.str());
  const Tokens next = random_tokens(2, 5, 20, 14);
  EXPECT_TRUE(BitIdentical(step_logits(model, next, restored), step_logits(model, next, state)));
}

TYPED_TEST(StateIoTest, WrongStateFileThrowsAndLeavesTheStateUnchanged) {
  using S = TypeParam;
  LanguageModel<S> model(small_lm_config());
  randomize(model, 15);
  auto batch2 = model.initial_state(2);
  Sequence<S> logits;
  model.forward(random_tokens(2, 6, 20, 15), batch2, logits);
  TempPath path("state2");
  xlstm::io::save_state(batch2, path.str());

  auto target = model.initial_state(3);
  model.forward(random_tokens(3, 7, 20, 16), target, logits);
  auto copy = target;
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::io::load_state(target, path.str()); },
                               {"block_0.mlstm_state.0", "block_1.slstm_state", "misshaped"}));

  // A state of another model (sLSTM where this one has mLSTM) fails too.
  LanguageModel<S> other(small_lm_config({0, 1, 2}));
  auto other_state = other.initial_state(3);
  TempPath other_path("other");
  xlstm::io::save_state(other_state, other_path.str());
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::io::load_state(target, other_path.str()); },
                       {"missing", "block_0.mlstm_state.0", "unexpected", "block_0.slstm_state"}));

  const Tokens next = random_tokens(3, 4, 20, 17);
  EXPECT_TRUE(BitIdentical(step_logits(model, next, target), step_logits(model, next, copy)));
}

}  // namespace

}  // namespace xlstm_test_io_model
