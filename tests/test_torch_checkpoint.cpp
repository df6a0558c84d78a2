// Tests of the PyTorch checkpoint reader (io/torch_checkpoint.hpp with
// io/zip_archive.hpp and io/torch_pickle.hpp): on files torch.save wrote
// (tests/data/torch, see its README), compared with their safetensors twins,
// and on archives and pickles built byte by byte here, each presenting one
// defect to the reader.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/stored_zip.hpp"
#include "test_util.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/torch_checkpoint.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_torch_checkpoint {

namespace {

using test_util::ThrowsMentioning;
using xlstm::io::DType;
using xlstm::io::PickledValue;
using xlstm::io::SafetensorsFile;
using xlstm::io::TorchCheckpoint;
using Bytes = std::vector<std::uint8_t>;
using Kind = PickledValue::Kind;

std::string data_path(const std::string& file) {
  return std::string(XLSTM_TEST_DATA_DIR) + "/torch/" + file;
}

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// A pickle built opcode by opcode, protocol 2 like torch.save's.
class PickleBuilder {
 public:
  PickleBuilder() : bytes_{0x80, 2} {}
  PickleBuilder& op(std::uint8_t opcode) {
    bytes_.push_back(opcode);
    return *this;
  }
  PickleBuilder& raw(std::initializer_list<int> values) {
    for (int v : values) bytes_.push_back(static_cast<std::uint8_t>(v));
    return *this;
  }
  PickleBuilder& str(const std::string& text) {
    op('X');
    for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<std::uint8_t>(text.size() >> (8 * i)));
    bytes_.insert(bytes_.end(), text.begin(), text.end());
    return *this;
  }
  /// BININT1 for 0..255, else BININT for 32 bits, else an 8-byte LONG1.
  PickleBuilder& integer(std::int64_t value) {
    if (value >= 0 && value <= 255) return raw({'K', int(value)});
    const int bytes = value >= INT32_MIN && value <= INT32_MAX ? 4 : 8;
    if (bytes == 4) {
      op('J');
    } else {
      raw({0x8a, 8});
    }
    for (int i = 0; i < bytes; ++i) {
      bytes_.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(value) >> (8 * i)));
    }
    return *this;
  }
  PickleBuilder& global(const std::string& module, const std::string& name) {
    op('c');
    bytes_.insert(bytes_.end(), module.begin(), module.end());
    op('\n');
    bytes_.insert(bytes_.end(), name.begin(), name.end());
    return op('\n');
  }
  PickleBuilder& tuple_of(const std::vector<std::int64_t>& values) {
    op('(');
    for (std::int64_t v : values) integer(v);
    return op('t');
  }
  /// _rebuild_tensor_v2 of a view of storage `key` (`elements` of `type`).
  PickleBuilder& tensor(const std::string& key, std::int64_t elements, std::int64_t offset,
                        const std::vector<std::int64_t>& shape,
                        const std::vector<std::int64_t>& strides,
                        const std::string& type = "FloatStorage") {
    global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", type).str(key).str("cpu").integer(elements).op('t');
    op('Q').integer(offset).tuple_of(shape).tuple_of(strides).op(0x89);
    global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R');
  }
  /// The pickle, ended by STOP.
  Bytes stop() const {
    Bytes done = bytes_;
    done.push_back('.');
    return done;
  }

 private:
  Bytes bytes_;
};

/// {"w": tensor} of storage "0".
Bytes one_tensor_pickle(std::int64_t elements, std::int64_t offset,
                        const std::vector<std::int64_t>& shape,
                        const std::vector<std::int64_t>& strides) {
  return PickleBuilder()
      .op('}')
      .str("w")
      .tensor("0", elements, offset, shape, strides)
      .op('s')
      .stop();
}

/// A checkpoint archive: `pickle` as archive/data.pkl and storage "0" holding
/// the floats 0, 1, 2, ... (`storage_bytes` bytes).
Bytes archive_of(const Bytes& pickle, std::size_t storage_bytes = 24) {
  Bytes storage(storage_bytes);
  for (std::size_t i = 0; i + 4 <= storage_bytes; i += 4) {
    const float value = static_cast<float>(i / 4);
    std::memcpy(storage.data() + i, &value, 4);
  }
  return fuzz::stored_zip({{"archive/data.pkl", pickle}, {"archive/data/0", storage}});
}

TorchCheckpoint load(const Bytes& bytes) {
  return TorchCheckpoint::from_bytes(bytes, "crafted.ckpt");
}

/// How many damaged files loaded (every tensor read in every way) and how
/// many were refused with xlstm::Error; anything else fails the test.
struct Outcomes {
  std::size_t loaded = 0, rejected = 0;

  void record(Bytes file, const std::string& what) {
    try {
      const auto checkpoint = TorchCheckpoint::from_bytes(std::move(file), "damaged.ckpt");
      for (const std::string& name : checkpoint.names()) {
        (void)checkpoint.bytes(name);
        (void)checkpoint.read<double>(name);
      }
      (void)checkpoint.to_safetensors(xlstm::io::tirex_state_dict_key);
      ++loaded;
    } catch (const xlstm::Error&) {
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": " << e.what();
    }
  }
};

// ---------------------------------------------------------------------------
// Files written by torch.save
// ---------------------------------------------------------------------------

/// Every tensor of `checkpoint_file` has the name, dtype, shape and bytes of
/// the same tensor in its safetensors twin.
void expect_matches_twin(const std::string& checkpoint_file, const std::string& twin_file) {
  const auto checkpoint = TorchCheckpoint::open(data_path(checkpoint_file));
  const auto twin = SafetensorsFile::open(data_path(twin_file));
  ASSERT_EQ(checkpoint.names(), twin.names());
  for (const std::string& name : twin.names()) {
    SCOPED_TRACE(name);
    const auto& expected = twin.info(name);
    const auto& tensor = checkpoint.info(name);
    EXPECT_EQ(tensor.dtype, expected.dtype);
    EXPECT_EQ(tensor.shape, expected.shape);
    const Bytes bytes = checkpoint.bytes(name);
    EXPECT_EQ(bytes, Bytes(twin.bytes(name), twin.bytes(name) + expected.byte_count()));
    EXPECT_EQ(checkpoint.read<double>(name), twin.read<double>(name));
  }
}

TEST(TorchCheckpoint, PlainStateDictMatchesItsSafetensorsTwin) {
  expect_matches_twin("plain.ckpt", "plain.safetensors");
}

TEST(TorchCheckpoint, LightningStateDictMatchesItsSafetensorsTwin) {
  expect_matches_twin("lightning.ckpt", "lightning.safetensors");
}

TEST(TorchCheckpoint, PickleProtocol4IsReadLikeProtocol2) {
  expect_matches_twin("lightning_protocol4.ckpt", "lightning.safetensors");
}

TEST(TorchCheckpoint, EveryDtypeIsRead) {
  const auto checkpoint = TorchCheckpoint::open(data_path("plain.ckpt"));
  EXPECT_EQ(checkpoint.info("proj.weight").dtype, DType::F32);
  EXPECT_EQ(checkpoint.info("vector_bf16").dtype, DType::BF16);
  EXPECT_EQ(checkpoint.info("matrix_f16").dtype, DType::F16);
  EXPECT_EQ(checkpoint.info("cube_f64").dtype, DType::F64);
  EXPECT_EQ(checkpoint.read<std::int64_t>("ints_i64"),
            (std::vector<std::int64_t>{-(std::int64_t(1) << 40), -1, 0, std::int64_t(1) << 62}));
  EXPECT_EQ(checkpoint.read<std::int32_t>("ints_i32"),
            (std::vector<std::int32_t>{-7, 0, 2147483647}));
  EXPECT_EQ(checkpoint.read<int>("bytes_u8"), (std::vector<int>{0, 1, 127, 128, 254, 255}));
  EXPECT_EQ(checkpoint.read<float>("parameter"), (std::vector<float>{0.25f, 0.5f}));
}

TEST(TorchCheckpoint, ScalarAndEmptyTensors) {
  const auto checkpoint = TorchCheckpoint::open(data_path("plain.ckpt"));
  EXPECT_EQ(checkpoint.info("scalar").shape, xlstm::Shape{});
  EXPECT_EQ(checkpoint.read<float>("scalar"), std::vector<float>{-2.5f});
  EXPECT_EQ(checkpoint.info("empty").shape, (xlstm::Shape{0, 3}));
  EXPECT_TRUE(checkpoint.bytes("empty").empty());
  EXPECT_TRUE(checkpoint.read<float>("empty").empty());
}

TEST(TorchCheckpoint, ViewsShareOneStorageWithTheirOffsetsAndStrides) {
  const auto checkpoint = TorchCheckpoint::open(data_path("plain.ckpt"));
  const auto& base = checkpoint.info("base");
  for (const char* view : {"view_rows", "view_columns", "view_transposed"}) {
    EXPECT_EQ(checkpoint.info(view).storage_key, base.storage_key) << view;
  }
  const auto& rows = checkpoint.info("view_rows");
  EXPECT_EQ(rows.storage_offset, 5u);
  EXPECT_TRUE(rows.is_contiguous());
  EXPECT_EQ(checkpoint.read<float>("view_rows"),
            (std::vector<float>{5, 6, 7, 8, 9, 10, 11, 12, 13, 14}));

  const auto& columns = checkpoint.info("view_columns");
  EXPECT_EQ(columns.storage_offset, 1u);
  EXPECT_EQ(columns.strides, (std::vector<std::size_t>{5, 2}));
  EXPECT_FALSE(columns.is_contiguous());
  EXPECT_EQ(checkpoint.read<float>("view_columns"),
            (std::vector<float>{1, 3, 6, 8, 11, 13, 16, 18}));

  EXPECT_EQ(checkpoint.info("view_transposed").strides, (std::vector<std::size_t>{1, 5}));
  const auto transposed = checkpoint.read<float>("view_transposed");
  ASSERT_EQ(transposed.size(), 20u);
  EXPECT_EQ(transposed[1], 5.0f);  // row 0, column 1 = base[1][0]
  EXPECT_EQ(transposed[4 * 4 + 3], 19.0f);

  EXPECT_EQ(checkpoint.info("expanded").strides, (std::vector<std::size_t>{0, 1}));
  EXPECT_EQ(checkpoint.read<float>("expanded"), (std::vector<float>{1, 2, 3, 1, 2, 3}));
}

class LightningCheckpoint : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(TorchCheckpoint, LightningCheckpoint,
                         ::testing::Values("lightning.ckpt", "lightning_protocol4.ckpt"));

TEST_P(LightningCheckpoint, ExposesItsHyperParameters) {
  const auto checkpoint = TorchCheckpoint::open(data_path(GetParam()));
  EXPECT_EQ(checkpoint.root().at("epoch").as_int(), 3);
  EXPECT_EQ(checkpoint.root().at("pytorch-lightning_version").as_string(), "2.0.0");
  ASSERT_NE(checkpoint.hyper_parameters(), nullptr);
  const PickledValue& hyper = *checkpoint.hyper_parameters();
  EXPECT_EQ(hyper.at("train_ctx_len").as_int(), 2048);
  EXPECT_TRUE(hyper.at("nothing").is(Kind::none));
  EXPECT_EQ(hyper.at("big").as_int(), std::int64_t(1) << 40);
  EXPECT_EQ(hyper.at("negative").as_int(), -3);
  EXPECT_EQ(hyper.at("negative_big").as_int(), -(std::int64_t(1) << 40));
  const auto& pair = hyper.at("pair");
  ASSERT_TRUE(pair.is(Kind::tuple));
  EXPECT_EQ(pair.items().at(0).as_int(), 1);
  EXPECT_EQ(pair.items().at(1).as_string(), "two");

  const PickledValue& config = hyper.at("model_config");
  EXPECT_EQ(config.at("input_patch_size").as_int(), 32);
  EXPECT_EQ(config.at("input_ff_dim").as_int(), 2048);
  const auto& quantiles = config.at("quantiles");
  ASSERT_TRUE(quantiles.is(Kind::list));
  ASSERT_EQ(quantiles.items().size(), 9u);
  EXPECT_EQ(quantiles.items()[0].as_double(), 0.1);
  EXPECT_EQ(quantiles.items()[8].as_double(), 0.9);
  const PickledValue& block = config.at("block_kwargs");
  EXPECT_EQ(block.at("embedding_dim").as_int(), 512);
  EXPECT_EQ(block.at("ffn_proj_factor").as_double(), 2.6667);
  EXPECT_EQ(block.at("slstm_at").as_string(), "all");
  EXPECT_FALSE(block.at("bias").as_bool());
  // Dicts keep the order the checkpoint wrote.
  EXPECT_EQ(block.entries().front().key.as_string(), "embedding_dim");
}

TEST(TorchCheckpoint, ValueAccessorsNameWhatTheyFound) {
  const auto checkpoint = TorchCheckpoint::open(data_path("lightning.ckpt"));
  const PickledValue& config = checkpoint.hyper_parameters()->at("model_config");
  EXPECT_TRUE(ThrowsMentioning([&] { (void)config.at("patch_size"); },
                               {"no key 'patch_size'", "str 'input_patch_size'"}));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)config.at("quantiles").as_int(); },
                               {"expected int", "found list of 9 items"}));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)config.at("input_patch_size").as_string(); },
                               {"expected str", "found int 32"}));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)checkpoint.info("nope"); },
                               {"lightning.ckpt", "no tensor 'nope'"}));
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)checkpoint.read<float>("epoch"); }, {"no tensor 'epoch'"}));
}

// ---------------------------------------------------------------------------
// Loading modules
// ---------------------------------------------------------------------------

TEST(TorchCheckpoint, TirexKeyRuleDeletesEveryBlockStackPrefix) {
  using xlstm::io::remove_substring;
  using xlstm::io::tirex_state_dict_key;
  EXPECT_EQ(tirex_state_dict_key("block_stack.blocks.0.norm.weight"), "blocks.0.norm.weight");
  EXPECT_EQ(tirex_state_dict_key("block_stack.block_stack.x"), "x");
  EXPECT_EQ(tirex_state_dict_key("a.block_stack.b"), "a.b");
  EXPECT_EQ(tirex_state_dict_key("output_patch_embedding.weight"), "output_patch_embedding.weight");
  // One left-to-right pass, as Python's str.replace: what a deletion joins stays.
  EXPECT_EQ(remove_substring("block_stablock_stack.ck.x", "block_stack."), "block_stack.x");
  EXPECT_TRUE(ThrowsMentioning([] { (void)remove_substring("abc", ""); }, "'part'"));

  const auto checkpoint = TorchCheckpoint::open(data_path("lightning.ckpt"));
  const auto renamed = checkpoint.to_safetensors(tirex_state_dict_key);
  EXPECT_EQ(renamed.name(), checkpoint.name());
  EXPECT_EQ(renamed.names(), (std::vector<std::string>{"blocks.0.norm.weight",
                                                       "output_patch_embedding.hidden_layer.weight",
                                                       "proj.bias", "proj.weight"}));
  EXPECT_EQ(renamed.read<double>("proj.weight"),
            checkpoint.read<double>("block_stack.proj.weight"));
  EXPECT_EQ(renamed.info("blocks.0.norm.weight").dtype, DType::BF16);

  EXPECT_TRUE(ThrowsMentioning(
      [&] { (void)checkpoint.to_safetensors([](const std::string&) { return std::string("w"); }); },
      {"lightning.ckpt", "are both renamed to 'w'"}));
}

TEST(TorchCheckpoint, LoadsModulesThroughTheSafetensorsLoaders) {
  const auto twin = SafetensorsFile::open(data_path("plain.safetensors"));
  xlstm::io::LoadOptions options;
  options.prefix = "proj.";
  options.allow_unexpected = true;

  // A .ckpt path opens like a safetensors file.
  EXPECT_TRUE(xlstm::io::is_torch_checkpoint_path("dir/model.CKPT"));
  EXPECT_FALSE(xlstm::io::is_torch_checkpoint_path("model.safetensors"));
  xlstm::Linear<float> proj(4, 3, true);
  xlstm::io::load_module(proj, xlstm::io::CheckpointFiles::open(data_path("plain.ckpt")), options);
  EXPECT_TRUE(test_util::Identical(proj.weight(), twin.read_matrix<float>("proj.weight")));
  EXPECT_EQ(std::vector<float>(proj.bias().data(), proj.bias().data() + 3),
            twin.read<float>("proj.bias"));

  // TiRex-style keys, renamed on the way.
  const auto lightning_twin = SafetensorsFile::open(data_path("lightning.safetensors"));
  const auto lightning = TorchCheckpoint::open(data_path("lightning.ckpt"));
  xlstm::Linear<double> renamed(4, 3, true);
  xlstm::io::load_parameters(xlstm::parameter_list(renamed),
                             lightning.to_safetensors(xlstm::io::tirex_state_dict_key), options);
  EXPECT_TRUE(test_util::Identical(renamed.weight(),
                                   lightning_twin.read_matrix<double>("block_stack.proj.weight")));

  // Without the rename the keys do not match, and the report says so.
  xlstm::Linear<float> unchanged(4, 3, true);
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::io::load_module(unchanged, lightning.to_safetensors(), options); },
      {"lightning.ckpt", "proj.weight"}));
}

// ---------------------------------------------------------------------------
// Refused files
// ---------------------------------------------------------------------------

TEST(TorchCheckpoint, ForbiddenGlobalsAreRefusedBeforeAnythingRuns) {
  EXPECT_TRUE(
      ThrowsMentioning([] { (void)TorchCheckpoint::open(data_path("forbidden_global.ckpt")); },
                       {"forbidden_global.ckpt", "global 'posix.system' is not allowed"}));
  EXPECT_TRUE(ThrowsMentioning([] { (void)TorchCheckpoint::open(data_path("custom_class.ckpt")); },
                               {"custom_class.ckpt", "global '__main__.CustomConfig'"}));
  EXPECT_TRUE(ThrowsMentioning(
      [] { (void)load(archive_of(PickleBuilder().str("os").str("system").op(0x93).stop())); },
      "global 'os.system' is not allowed"));
}

TEST(TorchCheckpoint, EveryTruncationIsAnError) {
  for (const char* file : {"plain.ckpt", "lightning.ckpt"}) {
    const Bytes whole = read_bytes(data_path(file));
    ASSERT_GT(whole.size(), 1000u);
    std::size_t loaded = 0;
    for (std::size_t length = 0; length < whole.size(); ++length) {
      try {
        (void)TorchCheckpoint::from_bytes(
            Bytes(whole.begin(), whole.begin() + std::ptrdiff_t(length)), "cut.ckpt");
        ++loaded;
        ADD_FAILURE() << file << " cut to " << length << " bytes loaded";
      } catch (const xlstm::Error&) {
      }
    }
    EXPECT_EQ(loaded, 0u) << file;
  }
}

TEST(TorchCheckpoint, FlippedBytesLoadOrThrowErrorButNeverCrash) {
  for (const char* file : {"plain.ckpt", "lightning.ckpt"}) {
    const Bytes whole = read_bytes(data_path(file));
    Outcomes outcomes;
    for (std::size_t at = 0; at < whole.size(); ++at) {
      for (std::uint8_t mask : {0x01, 0xFF}) {
        Bytes flipped = whole;
        flipped[at] ^= mask;
        outcomes.record(std::move(flipped), file + (" byte " + std::to_string(at)));
      }
    }
    // Flips in the data and the pickle break a CRC-32; flips in timestamps,
    // attributes and padding do not matter.
    EXPECT_GT(outcomes.rejected, whole.size()) << file;
    EXPECT_GT(outcomes.loaded, 0u) << file;
  }
}

TEST(TorchCheckpoint, FlippedPickleBytesLoadOrThrowErrorButNeverCrash) {
  // The archive's CRC-32s stop flipped bytes at the zip layer; rebuilding the
  // archive around each flipped pickle lets every flip reach the unpickler.
  for (const char* file : {"plain.ckpt", "lightning.ckpt"}) {
    const Bytes whole = read_bytes(data_path(file));
    std::vector<fuzz::ZipFile> files;
    std::size_t pickle = 0;
    for (const auto& entry : xlstm::io::list_stored_zip_entries(whole.data(), whole.size(), file)) {
      if (entry.name.size() > 9 && entry.name.substr(entry.name.size() - 9) == "/data.pkl") {
        pickle = files.size();
      }
      const auto begin = whole.begin() + std::ptrdiff_t(entry.offset);
      files.push_back({entry.name, Bytes(begin, begin + std::ptrdiff_t(entry.size))});
    }
    const Bytes original = files[pickle].bytes;
    Outcomes outcomes;
    for (std::size_t at = 0; at < original.size(); ++at) {
      for (std::uint8_t mask : {0x01, 0x80, 0xFF}) {
        files[pickle].bytes = original;
        files[pickle].bytes[at] ^= mask;
        outcomes.record(fuzz::stored_zip(files), file + (" pickle byte " + std::to_string(at)));
      }
    }
    EXPECT_GT(outcomes.loaded, 0u) << file;  // e.g. a changed letter of a key
    EXPECT_GT(outcomes.rejected, 0u) << file;
  }
}

TEST(TorchCheckpoint, ZipDefectsAreRefused) {
  const Bytes pickle = one_tensor_pickle(6, 0, {2, 3}, {3, 1});
  EXPECT_NO_THROW((void)load(archive_of(pickle)));
  EXPECT_TRUE(ThrowsMentioning(
      [] {
        (void)load(Bytes{'h', 'e', 'l', 'l', 'o'});
      },
      {"crafted.ckpt", "not a zip archive"}));
  EXPECT_TRUE(ThrowsMentioning([&] { (void)load(pickle); }, "not a zip archive"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        (void)load(
            fuzz::stored_zip({{"archive/data.pkl", pickle, 8}, {"archive/data/0", Bytes(24)}}));
      },
      {"entry 'archive/data.pkl'", "compressed (method 8)"}));

  Bytes corrupt = archive_of(pickle);
  corrupt[30 + std::strlen("archive/data.pkl") + 5] ^= 0x10;  // inside the pickle's bytes
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)load(corrupt); }, {"archive/data.pkl", "CRC-32 mismatch"}));

  Bytes zip64 = archive_of(pickle);
  zip64[zip64.size() - 22 + 8] = zip64[zip64.size() - 22 + 9] = 0xFF;  // entries on this disk
  zip64[zip64.size() - 22 + 10] = zip64[zip64.size() - 22 + 11] = 0xFF;
  EXPECT_TRUE(ThrowsMentioning([&] { (void)load(zip64); }, "ZIP64"));

  Bytes beyond = archive_of(pickle);
  const std::size_t directory =
      xlstm::io::detail::load_little_endian<std::uint32_t>(beyond.data() + beyond.size() - 6);
  beyond[directory + 42 + 3] = 0x7F;  // the first local header "at" 2 GB
  EXPECT_TRUE(
      ThrowsMentioning([&] { (void)load(beyond); }, "does not fit before the central directory"));

  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        (void)load(fuzz::stored_zip({{"archive/other", pickle}}));
      },
      "no <folder>/data.pkl"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        (void)load(fuzz::stored_zip({{"a/data.pkl", pickle}, {"b/data.pkl", pickle}}));
      },
      "two pickles"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        (void)load(fuzz::stored_zip({{"a/data.pkl", pickle}, {"a/data.pkl", pickle}}));
      },
      "occurs twice"));
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        (void)load(fuzz::stored_zip({{"archive/data.pkl", pickle},
                                     {"archive/data/0", Bytes(24)},
                                     {"archive/byteorder", {'b', 'i', 'g'}}}));
      },
      "byte order 'big'"));
}

TEST(TorchCheckpoint, TensorsMustLieInsideTheirStorage) {
  // Storage "0" holds 6 floats (24 bytes): 0, 1, ..., 5.
  const auto fits = load(archive_of(one_tensor_pickle(6, 1, {2, 2}, {3, 1})));
  EXPECT_EQ(fits.read<float>("w"), (std::vector<float>{1, 2, 4, 5}));  // the farthest element is 5
  EXPECT_NO_THROW((void)load(archive_of(one_tensor_pickle(6, 6, {0, 4}, {4, 1}))));

  struct Case {
    std::int64_t elements, offset;
    std::vector<std::int64_t> shape, strides;
    const char* needle;
  };
  const Case cases[] = {
      {6, 2, {2, 2}, {3, 1}, "reaches beyond the storage's 6 elements"},
      {6, 0, {2, 3}, {4, 1}, "reaches beyond"},
      {6, 0, {7}, {1}, "reaches beyond"},
      {7, 0, {2, 3}, {3, 1}, "7 elements of F32 do not fit the storage's 24 bytes"},
      {6, 7, {0, 3}, {3, 1}, "storage offset 7 is beyond"},
      {6, 0, {std::int64_t(1) << 40, std::int64_t(1) << 40}, {0, 0}, "overflows"},
      {6, 0, {1 << 20, 1 << 10}, {0, 0}, "more than its storage"},
      {6, std::int64_t(1) << 62, {1}, {1}, "reaches beyond"},
      {6, -1, {1}, {1}, "storage offset is negative"},
      {6, 0, {2, 3}, {3}, "2 dimensions but its stride 1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    EXPECT_TRUE(ThrowsMentioning(
        [&] {
          (void)load(archive_of(one_tensor_pickle(c.elements, c.offset, c.shape, c.strides)));
        },
        {"crafted.ckpt", c.needle}));
  }
  EXPECT_TRUE(ThrowsMentioning(
      [] {
        (void)load(archive_of(
            PickleBuilder().op('}').str("w").tensor("7", 6, 0, {6}, {1}).op('s').stop()));
      },
      {"storage '7'", "no entry 'archive/data/7'"}));
}

TEST(TorchCheckpoint, MalformedPicklesAreRefused) {
  struct Case {
    Bytes pickle;
    const char* needle;
  };
  // A list that doubles 40 times through shared references: 2^40 values.
  PickleBuilder doubling;
  doubling.op('}').str("x").op(']').raw({'q', 0});
  for (int i = 0; i < 40; ++i) doubling.raw({'h', 0, 0x86, 'q', 0});
  doubling.op('s');
  Bytes trailing = PickleBuilder().op('}').stop();
  trailing.push_back('.');

  const Case cases[] = {
      {PickleBuilder().op('}').raw({'I', '1', '\n'}).stop(), "opcode 0x49 ('I') is not supported"},
      {PickleBuilder().global("os", "system").stop(), "global 'os.system' is not allowed"},
      {PickleBuilder().op('}').str("a").raw({0x8a, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1}).op('s').stop(),
       "9 bytes does not fit 64 bits"},
      {PickleBuilder().op('}').op('(').str("a").integer(1).str("a").integer(2).op('u').stop(),
       "key 'a' twice"},
      {PickleBuilder().op('}').str("x").op(']').raw({'q', 0, 'h', 0, 'a'}).op('s').stop(),
       "nests deeper than 64 levels"},
      {doubling.stop(), "expands to more than"},
      {trailing, "1 bytes after STOP"},
      {PickleBuilder().op(']').stop(), "not a dict"},
      {PickleBuilder().op('}').op('}').stop(), "STOP with 2 objects"},
      {PickleBuilder().op('}').raw({'h', 5}).stop(), "memo has no entry 5"},
      {PickleBuilder().op('}').op('s').stop(), "stack underflow"},
      {PickleBuilder().op('}').op('(').op('s').stop(), "stack underflow"},
      {PickleBuilder().op('}').raw({'G', 0x3f, 0xf0, 0, 0, 0, 0, 0, 0}).integer(1).op('s').stop(),
       "dict key must be a str or int, found a float"},
      {PickleBuilder()
           .op('}')
           .str("w")
           .global("torch", "FloatStorage")
           .op(')')
           .op('R')
           .op('s')
           .stop(),
       "a storage type cannot be called"},
      {PickleBuilder()
           .op('}')
           .str("w")
           .op('(')
           .str("module")
           .integer(1)
           .str("0")
           .str("cpu")
           .integer(1)
           .op('t')
           .op('Q')
           .op('s')
           .stop(),
       "persistent id of type 'module'"},
      {PickleBuilder().op('}').str("w").global("collections", "OrderedDict").op('s').stop(),
       "holds a global (collections.OrderedDict) as a value"},
      {Bytes{0x80, 1, '}', '.'}, "pickle protocol 1"},
      {Bytes{0x80, 2, '}', 'X', 100, 0, 0, 0, 'a', '.'}, "pickle truncated"},
      {Bytes{0x80, 2, '}', 'c', 'o', 's'}, "no end of line"},
      {Bytes{0x80, 2, '}'}, "pickle truncated"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    EXPECT_TRUE(ThrowsMentioning([&] { (void)load(archive_of(c.pickle)); },
                                 {"crafted.ckpt: archive/data.pkl", c.needle}));
  }
}

TEST(TorchCheckpoint, IntegersOfEveryEncoding) {
  const std::pair<std::int64_t, Bytes> cases[] = {
      {255, {'K', 255}},                                           // BININT1
      {65535, {'M', 255, 255}},                                    // BININT2
      {-5, {'J', 0xFB, 0xFF, 0xFF, 0xFF}},                         // BININT
      {0, {0x8a, 0}},                                              // LONG1, no bytes
      {-1, {0x8a, 1, 0xFF}},                                       // LONG1, sign-extended
      {-(std::int64_t(1) << 40), {0x8a, 6, 0, 0, 0, 0, 0, 0xFF}},  // torch writes this
      {std::int64_t(1) << 32, {0x8a, 5, 0, 0, 0, 0, 1}},
      {INT64_MIN, {0x8a, 8, 0, 0, 0, 0, 0, 0, 0, 0x80}},
  };
  for (const auto& [expected, encoding] : cases) {
    SCOPED_TRACE(expected);
    PickleBuilder pickle;
    pickle.op('}').str("n");
    for (std::uint8_t b : encoding) pickle.op(b);
    const auto checkpoint = load(archive_of(pickle.op('s').stop()));
    EXPECT_EQ(checkpoint.root().at("n").as_int(), expected);
  }
}

TEST(TorchCheckpoint, SharedContainersKeepPythonsReferenceSemantics) {
  // d["a"] = l; d["b"] = l; l.append(3); d["c"] = l: all three are [3].
  const Bytes pickle = PickleBuilder()
                           .op('}')
                           .str("a")
                           .op(']')
                           .raw({'q', 0})
                           .op('s')
                           .str("b")
                           .raw({'h', 0})
                           .op('s')
                           .str("c")
                           .raw({'h', 0})
                           .integer(3)
                           .op('a')
                           .op('s')
                           .stop();
  const auto checkpoint = load(archive_of(pickle));
  for (const char* key : {"a", "b", "c"}) {
    const auto& list = checkpoint.root().at(key);
    ASSERT_EQ(list.items().size(), 1u) << key;
    EXPECT_EQ(list.items()[0].as_int(), 3) << key;
  }
  EXPECT_EQ(checkpoint.size(), 0u);  // no tensors: an empty state dict
}

}  // namespace

}  // namespace xlstm_test_torch_checkpoint
