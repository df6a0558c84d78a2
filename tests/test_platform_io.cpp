// Tests of the platform layer of xlstm/io (mapped_file.hpp, file_path.hpp):
// files are mapped where the OS can map them (mmap on POSIX, a file mapping
// on Windows), paths with non-ASCII characters work, empty files load as no
// bytes, and a missing file is an xlstm::Error naming it. The same file runs
// on Linux and, cross-compiled with mingw-w64, under wine (the windows-cross
// preset), where the narrow-path pitfalls of Windows would show.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/io/file_path.hpp"
#include "xlstm/io/mapped_file.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/shard_index.hpp"

namespace xlstm_test_platform_io {

namespace fs = std::filesystem;
using xlstm::io::CheckpointFiles;
using xlstm::io::SafetensorsFile;
using xlstm::io::SafetensorsWriter;
using xlstm::io::detail::load_file;
using xlstm::io::detail::utf8_path;
using xlstm::io::detail::utf8_string;

// Written in UTF-8 as the library takes every path. Spelled as octal escapes
// (a hex escape would swallow a following "e" or "c") so that the test does
// not depend on the compiler's source character set: MSVC reads a file
// without a BOM in the ANSI code page.
const std::string kDirectory = "donn\303\251es";  // données
const std::string kFile =
    "\303\274n\303\257c\303\266d\303\251_\346\250\241\345\236\213.safetensors";  // ünïcödé_模型

constexpr bool kPlatformMaps = XLSTM_IO_HAVE_MMAP || XLSTM_IO_HAVE_WIN32_MAPPING;

// Expects `call` to throw xlstm::Error whose message contains `part`.
template <typename Call>
void expect_error_containing(Call call, const std::string& part) {
  try {
    call();
    ADD_FAILURE() << "expected xlstm::Error containing '" << part << "'";
  } catch (const xlstm::Error& error) {
    EXPECT_NE(std::string(error.what()).find(part), std::string::npos)
        << "message: " << error.what() << "\nexpected to contain: " << part;
  }
}

// Each test gets a fresh directory under the system's temporary directory,
// named after the test and the clock so that two builds running the suite at
// the same time do not meet; it is removed at the end.
class PlatformIo : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    root_ = fs::temp_directory_path() /
            ("xlstm_platform_io_" + std::string(test->name()) + "_" + std::to_string(stamp));
    fs::create_directories(root_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  // The UTF-8 path of `name` (UTF-8) under the test's directory.
  std::string under_root(const std::string& name) const {
    return utf8_string(root_ / utf8_path(name));
  }

  fs::path root_;
};

std::vector<float> weight_values() { return {1.5f, -2.25f, 3.0f, 0.125f, -0.5f, 7.0f}; }

SafetensorsWriter small_writer(float scale) {
  SafetensorsWriter writer;
  std::vector<float> weight = weight_values();
  for (float& w : weight) w *= scale;
  const std::vector<double> bias = {0.25 * double(scale), -1.0 * double(scale)};
  writer.add<float>("weight", {2, 3}, weight.data());
  writer.add<double>("bias", {2}, bias.data());
  return writer;
}

TEST_F(PlatformIo, Utf8PathRoundTrips) {
  const std::string name = kDirectory + "/" + kFile;
  EXPECT_EQ(utf8_string(utf8_path(name)), name);
  EXPECT_EQ(utf8_string(utf8_path(kFile).extension()), ".safetensors");
#ifdef _WIN32
  // The native (wide) name holds the characters, not the UTF-8 bytes.
  EXPECT_EQ(utf8_path(kDirectory).native(), std::wstring(L"donn\u00e9es"));
#endif
}

TEST_F(PlatformIo, NonAsciiPathWritesMapsAndReads) {
  const std::string directory = under_root(kDirectory);
  fs::create_directories(utf8_path(directory));
  const std::string path = directory + "/" + kFile;
  const SafetensorsWriter writer = small_writer(1.0f);
  writer.save(path);

  // The name on disk is the one given, not its bytes read in another code
  // page, and the writer's temporary file is gone.
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(utf8_path(directory))) {
    names.push_back(utf8_string(entry.path().filename()));
  }
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(names[0], kFile);

  const auto bytes = load_file(path);
  const std::vector<std::uint8_t> expected = writer.to_bytes();
  ASSERT_EQ(bytes->size(), expected.size());
  EXPECT_EQ(bytes->size(), fs::file_size(utf8_path(path)));
  EXPECT_EQ(std::memcmp(bytes->data(), expected.data(), expected.size()), 0);
  EXPECT_EQ(bytes->mapped(), kPlatformMaps);

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.read<float>("weight"), weight_values());
  EXPECT_EQ(file.read<double>("bias"), (std::vector<double>{0.25, -1.0}));
}

TEST_F(PlatformIo, SavingAgainReplacesTheFile) {
  const std::string path = under_root(kFile);
  small_writer(1.0f).save(path);
  {
    // Windows cannot replace a file while a view of it is mapped: the first
    // file is closed before the second save.
    const SafetensorsFile first = SafetensorsFile::open(path);
    EXPECT_EQ(first.read<float>("weight")[0], 1.5f);
  }
  small_writer(2.0f).save(path);
  const SafetensorsFile second = SafetensorsFile::open(path);
  EXPECT_EQ(second.read<float>("weight")[0], 3.0f);
  EXPECT_EQ(second.read<double>("bias")[1], -2.0);
}

TEST_F(PlatformIo, NonAsciiCheckpointDirectoryAndShardNames) {
  const std::string directory = under_root(kDirectory);
  fs::create_directories(utf8_path(directory));
  const std::string shard = "\303\251tape-1.safetensors";  // étape-1
  small_writer(1.0f).save(directory + "/" + shard);
  std::ofstream(utf8_path(directory + "/model.safetensors.index.json"))
      << R"({"weight_map": {"weight": ")" << shard << R"(", "bias": ")" << shard << "\"}}";

  const CheckpointFiles files = CheckpointFiles::open(directory);
  ASSERT_TRUE(files.contains("weight"));
  EXPECT_EQ(files.file_of("weight").read<float>("weight"), weight_values());
  EXPECT_NE(files.file_of("bias").name().find(shard), std::string::npos);
}

TEST_F(PlatformIo, EmptyFileIsNoBytes) {
  const std::string path = under_root("leer_\303\251.bin");  // leer_é.bin
  std::ofstream(utf8_path(path), std::ios::binary).close();
  ASSERT_TRUE(fs::exists(utf8_path(path)));

  const auto bytes = load_file(path);
  EXPECT_EQ(bytes->size(), 0u);
  EXPECT_FALSE(bytes->mapped());  // nothing to map: mmap and MapViewOfFile refuse 0 bytes
  // Not a safetensors file, and the message says which file.
  expect_error_containing([&] { SafetensorsFile::open(path); }, path);
}

TEST_F(PlatformIo, MissingFileIsAnErrorNamingIt) {
  const std::string path = under_root("fehlt_\303\237.safetensors");  // fehlt_ß
  expect_error_containing([&] { load_file(path); }, path + ": cannot open");
  expect_error_containing([&] { SafetensorsFile::open(path); }, path);
}

TEST_F(PlatformIo, DirectoryIsAnErrorNamingIt) {
  const std::string directory = under_root(kDirectory);
  fs::create_directories(utf8_path(directory));
  expect_error_containing([&] { load_file(directory); }, directory + ": cannot read");
}

}  // namespace xlstm_test_platform_io
