// Threads: one loaded model serves many sequences at once. Models are
// immutable during forward() and step(); everything that changes lives in the
// caller's state (and its step workspace). So 8 threads sharing one `const`
// model, each with its own state and sequence, must produce exactly the logits
// that the same work produces run one job after another. Decoding must also
// give the same bits with any library thread count (OpenMP, when built with
// it), and so must prefill (expect_runs_independent_of_thread_count).
//
// The models are loaded from a checkpoint written by save_module /
// save_large_model, as an application would load them (float, BF16 kept
// 16-bit, and quantised to int8 or 4-bit while loading). Run this program under
// the `tsan` preset (ThreadSanitizer) to check that sharing is also race-free.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "xlstm/core/init.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/large_checkpoint.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/large_model.hpp"

#include "test_util.hpp"

#if defined(XLSTM_BLAS_OPENBLAS)
extern "C" int openblas_get_num_threads(void);  // OpenBLAS's (cblas.h)
#endif

namespace {

namespace io = xlstm::io;
using test_util::add_noise;
using test_util::random_tokens;
using test_util::TempPath;
using xlstm::Index;
using xlstm::LanguageModel;
using xlstm::LanguageModelConfig;
using xlstm::LargeModel;
using xlstm::LargeModelConfig;
using xlstm::Matrix;
using xlstm::Rng;
using xlstm::Sequence;
using xlstm::Tokens;

// With a BLAS behind Eigen's products (XLSTM_USE_BLAS), the library's
// threads are the only pool: OpenBLAS's pthreads build is kept to one
// thread, its OpenMP build follows the library's (core/blas_threads.hpp).
// Without one, there is nothing to keep.
TEST(BlasThreadsTest, ABlasRunsNoPoolBesideTheLibrarysThreads) {
#if defined(XLSTM_BLAS_OPENBLAS)
  switch (openblas_get_parallel()) {
    case 1:
      EXPECT_EQ(xlstm::blas_threads(), xlstm::BlasThreads::kept_to_one);
      EXPECT_EQ(openblas_get_num_threads(), 1);
      break;
    case 2:
      EXPECT_EQ(xlstm::blas_threads(), xlstm::BlasThreads::follows_openmp);
      break;
    default:
      EXPECT_EQ(xlstm::blas_threads(), xlstm::BlasThreads::sequential);
  }
#elif defined(EIGEN_USE_BLAS)
  EXPECT_EQ(xlstm::blas_threads(), xlstm::BlasThreads::unknown);
#else
  EXPECT_EQ(xlstm::blas_threads(), xlstm::BlasThreads::no_blas);
#endif
  EXPECT_FALSE(xlstm::blas_threads_name(xlstm::blas_threads()).empty());
}

constexpr int kThreads = 8;
constexpr int kDecodeSteps = 20;
// ThreadSanitizer finds a race from the happens-before order of one run,
// whatever the timing; repeating matters for the bit comparison, where a race
// shows only when the threads happen to collide. TSan makes a run ~10x slower.
#ifdef XLSTM_TEST_UNDER_TSAN
constexpr int kConcurrentRuns = 2;
#else
constexpr int kConcurrentRuns = 3;
#endif

// ---------------------------------------------------------------------------
// Models

// E = 64, four blocks with the sLSTM at index 1. The vocabulary of 4096 makes
// the LM head 4096 x 64 = 2^18 weights, the size from which a decode step
// splits the weight rows over the threads (core/matmul.hpp).
LanguageModelConfig lm_config() { return test_util::lm_config(64, 4, {1}, 4096, 64); }

// Also a 4096 x 64 LM head, for the same reason.
LargeModelConfig large_config() {
  LargeModelConfig c = test_util::large_config(64, 2, 2, 4096);
  c.chunk_size = 16;
  c.mode = "inference";
  return c;
}

template <typename S>
LanguageModel<S> loaded_language_model() {
  LanguageModel<S> original(lm_config());
  Rng rng(11);
  original.initialize(rng);
  // The official initialisation leaves some tensors zero or constant; noise on
  // every parameter makes every path of the model matter.
  std::mt19937_64 noise_engine(12);
  add_noise(original, noise_engine, 0.05);
  const TempPath file("lm");
  io::save_module(original, file.str());
  LanguageModel<S> loaded(lm_config());
  io::load_module(loaded, io::SafetensorsFile::open(file.str()));
  return loaded;
}

// `matrix_dtype` BF16 keeps the weights 16-bit in memory (views into the
// mapped file), whose products decode tiles into a per-thread scratch buffer.
template <typename S>
LargeModel<S> loaded_large_model(std::optional<io::DType> matrix_dtype) {
  LargeModel<S> original(large_config());
  Rng rng(21);
  original.initialize(rng, /*noise=*/0.5);
  const TempPath file(matrix_dtype ? "large_bf16" : "large");
  io::save_large_model(original, file.str(), io::LargeNaming::official, /*fused=*/false,
                       matrix_dtype);
  return io::load_large_model<S>(file.str());
}

// Quantised while loading (int8_rows or q4_g32, math §16.5): every matrix
// of at least 1024 weights, the embedding and the 4096 x 64 head included, so
// the quantised step product splits the head's rows over the threads too.
template <typename S>
LargeModel<S> loaded_quantized_large_model(xlstm::WeightStorage format) {
  LargeModel<S> original(large_config());
  Rng rng(22);
  original.initialize(rng, /*noise=*/0.5);
  const TempPath file("large_quantized");
  io::save_large_model(original, file.str());
  io::LargeLoadOptions options;
  options.quantize = format;
  options.quantize_options = {/*min_elements=*/1024, /*include_embedding_and_head=*/true};
  LargeModel<S> loaded = io::load_large_model<S>(file.str(), std::nullopt, options);
  EXPECT_EQ(loaded.lm_head().weight_matrix().storage(), format);
  return loaded;
}

// The quantised formats a test runs for scalar type S: both, except under a
// sanitizer (a run there is 5-10x slower and CI's time is bounded), where
// float takes int8 and double 4-bit: both formats' loaders and kernels still
// run under each sanitizer, and sharing a model is the same code for both.
template <typename S>
std::vector<xlstm::WeightStorage> quantized_formats() {
#if defined(XLSTM_TEST_UNDER_ASAN) || defined(XLSTM_TEST_UNDER_TSAN)
  if (std::is_same_v<S, float>) return {xlstm::WeightStorage::int8_rows};
  return {xlstm::WeightStorage::q4_g32};
#else
  return {xlstm::WeightStorage::int8_rows, xlstm::WeightStorage::q4_g32};
#endif
}

// ---------------------------------------------------------------------------
// Jobs

// One thread's work: a prompt (B x T) to prefill, then kDecodeSteps steps.
struct Job {
  Tokens prompt;
};

// Eight jobs of different lengths (1 to 80 tokens: the mLSTM's parallel and
// chunkwise prefill forms) and batch sizes (1 and 2).
std::vector<Job> make_jobs(Index vocab) {
  const Index lengths[kThreads] = {1, 5, 12, 17, 24, 40, 65, 80};
  std::mt19937_64 engine(31);
  std::vector<Job> jobs;
  for (int j = 0; j < kThreads; ++j)
    jobs.push_back(Job{random_tokens(1 + j % 2, lengths[j], vocab, engine)});
  return jobs;
}

// A job in progress: its state, every logit so far (the prefill's B x T x V,
// then each step's B x V) and the last logits, which choose the next tokens.
template <typename Model>
struct Run {
  using Scalar = typename Model::Scalar;
  typename Model::State state;
  std::vector<Scalar> logits;
  Matrix<Scalar> last;
};

template <typename Model>
Run<Model> prefill(const Model& model, const Job& job) {
  const Index batch = job.prompt.rows(), time = job.prompt.cols();
  Run<Model> run{model.initial_state(batch), {}, {}};
  Sequence<typename Model::Scalar> logits;
  model.forward(job.prompt, run.state, logits);
  run.logits.assign(logits.matrix().data(), logits.matrix().data() + logits.matrix().size());
  run.last.resize(batch, model.vocab_size());
  for (Index b = 0; b < batch; ++b) run.last.row(b) = logits.at(b, time - 1);
  return run;
}

// kDecodeSteps steps. Each token is the previous logits' argmax plus the step
// number, so the tokens depend on the results and no run settles into
// repeating itself.
template <typename Model>
void decode(const Model& model, Run<Model>& run) {
  const Index batch = run.last.rows(), vocab = model.vocab_size();
  std::vector<std::int64_t> tokens(std::size_t(batch), 0);
  for (int t = 0; t < kDecodeSteps; ++t) {
    for (Index b = 0; b < batch; ++b) {
      Index best = 0;
      run.last.row(b).maxCoeff(&best);
      tokens[std::size_t(b)] = (best + t) % vocab;
    }
    model.step(tokens, run.state, run.last);
    run.logits.insert(run.logits.end(), run.last.data(), run.last.data() + run.last.size());
  }
}

// Every logit of a job: prefill, then decode.
template <typename Model>
std::vector<typename Model::Scalar> run_job(const Model& model, const Job& job) {
  Run<Model> run = prefill(model, job);
  decode(model, run);
  return run.logits;
}

template <typename Model>
std::vector<std::vector<typename Model::Scalar>> run_sequentially(const Model& model,
                                                                  const std::vector<Job>& jobs) {
  std::vector<std::vector<typename Model::Scalar>> results;
  for (const Job& job : jobs) results.push_back(run_job(model, job));
  return results;
}

// One std::thread per job, all sharing `model`; they start together.
template <typename Model>
std::vector<std::vector<typename Model::Scalar>> run_concurrently(const Model& model,
                                                                  const std::vector<Job>& jobs) {
  std::vector<std::vector<typename Model::Scalar>> results(jobs.size());
  std::vector<std::exception_ptr> errors(jobs.size());
  std::atomic<std::size_t> waiting{jobs.size()};
  std::vector<std::thread> threads;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    threads.emplace_back([&, j] {
      waiting.fetch_sub(1);
      while (waiting.load() > 0) std::this_thread::yield();
      try {
        results[j] = run_job(model, jobs[j]);
      } catch (...) {
        errors[j] = std::current_exception();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  return results;
}

// Exact equality of every bit, with the first difference in the message.
template <typename S>
::testing::AssertionResult BitIdentical(const std::vector<std::vector<S>>& actual,
                                        const std::vector<std::vector<S>>& expected) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << actual.size() << " results, expected " << expected.size();
  }
  for (std::size_t j = 0; j < actual.size(); ++j) {
    const auto& a = actual[j];
    const auto& e = expected[j];
    if (a.size() != e.size()) {
      return ::testing::AssertionFailure()
             << "job " << j << ": " << a.size() << " logits, expected " << e.size();
    }
    if (std::memcmp(a.data(), e.data(), a.size() * sizeof(S)) == 0) continue;
    std::size_t i = 0;
    while (std::memcmp(&a[i], &e[i], sizeof(S)) == 0) ++i;
    return ::testing::AssertionFailure() << "job " << j << ": logit " << i << " of " << a.size()
                                         << " is " << a[i] << ", expected " << e[i];
  }
  return ::testing::AssertionSuccess();
}

// Restores the library's thread count on scope exit.
struct ThreadCountGuard {
  int saved = xlstm::num_threads();
  ~ThreadCountGuard() { xlstm::set_num_threads(saved); }
};

// One library thread, and the default count when built with OpenMP.
std::vector<int> thread_counts() {
  const int threads = xlstm::num_threads();
  return threads > 1 ? std::vector<int>{1, threads} : std::vector<int>{1};
}

// With every library thread count: the jobs run one after another are the
// reference, and each concurrent run must match it bit for bit.
template <typename Model>
void expect_concurrent_runs_equal_sequential_runs(const Model& model) {
  const ThreadCountGuard guard;
  const std::vector<Job> jobs = make_jobs(model.vocab_size());
  for (const int threads : thread_counts()) {
    SCOPED_TRACE(::testing::Message() << "library threads " << threads);
    xlstm::set_num_threads(threads);
    const auto reference = run_sequentially(model, jobs);
    for (int run = 0; run < kConcurrentRuns; ++run) {
      SCOPED_TRACE(::testing::Message() << "concurrent run " << run);
      EXPECT_TRUE(BitIdentical(run_concurrently(model, jobs), reference));
    }
  }
}

// Prefill and decoding give the same bits with any library thread count: a
// step's products split the weight rows over the threads and each output is
// one thread's dot product, computed as a single thread would; a sequence's
// products (kernels/blocked_product.hpp) compute every element by the same
// operations whatever the split of the output into tasks. (The cells
// split heads and batch rows, each computed as alone.)
template <typename Model>
void expect_runs_independent_of_thread_count(const Model& model) {
  const ThreadCountGuard guard;
  const std::vector<Job> jobs = make_jobs(model.vocab_size());
  std::vector<std::vector<typename Model::Scalar>> reference;
  // Also an odd count, which shares the tasks out unevenly.
  for (const int threads : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << "library threads " << threads);
    xlstm::set_num_threads(threads);
    std::vector<std::vector<typename Model::Scalar>> results;
    for (const Job& job : jobs) results.push_back(run_job(model, job));
    if (reference.empty()) {
      reference = results;
    } else {
      EXPECT_TRUE(BitIdentical(results, reference));
    }
  }
}

// ---------------------------------------------------------------------------
// Tests

template <typename S>
class SharedModelTest : public ::testing::Test {};
using test_util::Scalars;
TYPED_TEST_SUITE(SharedModelTest, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(SharedModelTest, LanguageModelGivesEachThreadTheSequentialLogits) {
  const LanguageModel<TypeParam> model = loaded_language_model<TypeParam>();
  expect_concurrent_runs_equal_sequential_runs(model);
}

TYPED_TEST(SharedModelTest, LargeModelGivesEachThreadTheSequentialLogits) {
  const LargeModel<TypeParam> model = loaded_large_model<TypeParam>(std::nullopt);
  expect_concurrent_runs_equal_sequential_runs(model);
}

TYPED_TEST(SharedModelTest, LargeModelWithBf16WeightsGivesEachThreadTheSequentialLogits) {
  const LargeModel<TypeParam> model = loaded_large_model<TypeParam>(io::DType::BF16);
  ASSERT_TRUE(model.embedding().is_half());
  for (const auto* w : xlstm::weight_matrices(model)) ASSERT_TRUE(w->is_half());
  expect_concurrent_runs_equal_sequential_runs(model);
}

TYPED_TEST(SharedModelTest, LargeModelWithQuantisedWeightsGivesEachThreadTheSequentialLogits) {
  for (const auto format : quantized_formats<TypeParam>()) {
    SCOPED_TRACE(xlstm::storage_name(format));
    const LargeModel<TypeParam> model = loaded_quantized_large_model<TypeParam>(format);
    expect_concurrent_runs_equal_sequential_runs(model);
  }
}

TYPED_TEST(SharedModelTest, PrefillAndDecodeAreBitIdenticalForAnyThreadCount) {
  if (thread_counts().size() < 2) GTEST_SKIP() << "one library thread (built without OpenMP)";
  const LanguageModel<TypeParam> lm = loaded_language_model<TypeParam>();
  expect_runs_independent_of_thread_count(lm);
  const LargeModel<TypeParam> large = loaded_large_model<TypeParam>(std::nullopt);
  expect_runs_independent_of_thread_count(large);
  const LargeModel<TypeParam> large_bf16 = loaded_large_model<TypeParam>(io::DType::BF16);
  expect_runs_independent_of_thread_count(large_bf16);
  for (const auto format : quantized_formats<TypeParam>()) {
    SCOPED_TRACE(xlstm::storage_name(format));
    expect_runs_independent_of_thread_count(loaded_quantized_large_model<TypeParam>(format));
  }
}

}  // namespace
