// The formal-language data (math §15): the random streams, the four task
// generators and the dataset splits against reference samples drawn by the
// official NX-AI/xlstm code (tests/data/formal_language/README.md), the
// transform and its shift by hand, batches with per-row lengths run ragged
// through a model, the accuracy metric by hand, and bad configs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "xlstm/model/cross_entropy.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/train/formal_language_batch.hpp"
#include "xlstm/train/formal_language_dataset.hpp"
#include "xlstm/train/formal_language_task.hpp"
#include "xlstm/train/numpy_generator.hpp"
#include "xlstm/train/python_random.hpp"
#include "xlstm/train/sequence_accuracy.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_formal_language {

namespace {

using test_util::ThrowsMentioning;
using xlstm::FormalLanguageDataset;
using xlstm::FormalLanguageDatasetConfig;
using xlstm::FormalLanguageTask;
using xlstm::FormalLanguageTaskConfig;
using xlstm::Index;
using xlstm::Tokens;

// ---------------------------------------------------------------------------
// reference.txt: one record a line, `kind key=value ...`, lists comma-separated
// ---------------------------------------------------------------------------

struct Record {
  std::string kind;
  std::map<std::string, std::string> fields;

  const std::string& at(const std::string& key) const {
    const auto it = fields.find(key);
    if (it == fields.end()) throw std::runtime_error(kind + " record lacks '" + key + "'");
    return it->second;
  }
  std::int64_t integer(const std::string& key) const { return std::stoll(at(key)); }
  std::optional<std::int64_t> optional(const std::string& key) const {
    return at(key) == "none" ? std::nullopt : std::optional<std::int64_t>(integer(key));
  }
  std::vector<std::int64_t> list(const std::string& key) const {
    std::vector<std::int64_t> out;
    std::stringstream in(at(key));
    for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
    return out;
  }
};

const std::vector<Record>& reference() {
  static const std::vector<Record> records = [] {
    std::ifstream in(std::string(XLSTM_TEST_DATA_DIR) + "/formal_language/reference.txt");
    if (!in) throw std::runtime_error("cannot open tests/data/formal_language/reference.txt");
    std::vector<Record> out;
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] == '#') continue;
      std::stringstream words(line);
      Record r;
      words >> r.kind;
      for (std::string word; words >> word;) {
        const auto eq = word.find('=');
        r.fields[word.substr(0, eq)] = word.substr(eq + 1);
      }
      out.push_back(std::move(r));
    }
    return out;
  }();
  return records;
}

std::vector<const Record*> records_of(const std::string& kind) {
  std::vector<const Record*> out;
  for (const auto& r : reference()) {
    if (r.kind == kind) out.push_back(&r);
  }
  return out;
}

std::vector<std::int64_t> flatten(const Tokens& m) {
  return std::vector<std::int64_t>(m.data(), m.data() + m.size());
}

FormalLanguageTaskConfig task_of(const Record& r) {
  FormalLanguageTaskConfig c;
  c.task = xlstm::parse_formal_language_task(r.at("name"));
  c.vocab_size = r.integer("vocab");
  c.context_length = r.integer("context");
  c.min_sequence_length = r.optional("min");
  c.max_sequence_length = r.optional("max");
  if (r.fields.count("step")) c.max_step_size = r.integer("step");
  return c;
}

FormalLanguageDatasetConfig dataset_config_of(const Record& r) {
  FormalLanguageDatasetConfig c;
  c.task = task_of(r);
  c.seed = r.integer("seed");
  const auto counts = r.list("counts");
  c.train_count = counts.at(0);
  c.validation_count = counts.at(1);
  c.test_count = counts.at(2);
  if (r.at("subparts") != "none") {
    std::stringstream in(r.at("subparts"));
    for (std::string part; std::getline(in, part, ',');) {
      const auto a = part.find(':'), b = part.rfind(':');
      auto number = [](const std::string& s) {
        return s == "none" ? std::nullopt : std::optional<std::int64_t>(std::stoll(s));
      };
      c.subparts.push_back(
          {part.substr(0, a), number(part.substr(a + 1, b - a - 1)), number(part.substr(b + 1))});
    }
  }
  c.shift = r.integer("shift");
  c.enable_mask = r.integer("enable_mask") != 0;
  return c;
}

// ---------------------------------------------------------------------------
// Exact match with the official code
// ---------------------------------------------------------------------------

TEST(FormalLanguageReference, PythonRandintIsCPythons) {
  const auto records = records_of("randint");
  ASSERT_GE(records.size(), 10u);
  for (const Record* r : records) {
    xlstm::PythonRandom rng(r->integer("seed"));
    std::vector<std::int64_t> drawn;
    for (std::size_t i = 0; i < r->list("values").size(); ++i) {
      drawn.push_back(rng.randint(r->integer("a"), r->integer("b")));
    }
    EXPECT_EQ(drawn, r->list("values")) << "seed " << r->at("seed") << " a " << r->at("a");
  }
}

TEST(FormalLanguageReference, NumpyIntegersAreNumpys) {
  const auto records = records_of("integers");
  ASSERT_GE(records.size(), 5u);
  for (const Record* r : records) {
    xlstm::NumpyGenerator rng(std::uint64_t(r->integer("seed")));
    std::vector<std::int64_t> drawn;
    std::stringstream calls(r->at("calls"));
    for (std::string call; std::getline(calls, call, ',');) {
      std::int64_t low = 0, high = 0, count = 0;
      char colon = 0;
      std::stringstream(call) >> low >> colon >> high >> colon >> count;
      for (auto v : rng.integers(low, high, std::size_t(count))) drawn.push_back(v);
    }
    EXPECT_EQ(drawn, r->list("values")) << "seed " << r->at("seed");
  }
}

TEST(FormalLanguageReference, TaskRowsAreTheOfficialOnes) {
  const auto records = records_of("task");
  std::set<std::string> tasks;
  bool saw_wrap = false;
  for (const Record* r : records) {
    const auto rows = xlstm::generate_formal_language(
        task_of(*r), std::uint64_t(r->integer("seed")), Index(r->integer("batch")));
    const std::string what = r->at("name") + " vocab " + r->at("vocab") + " seed " + r->at("seed");
    EXPECT_EQ(flatten(rows.tokens), r->list("tokens")) << what;
    EXPECT_EQ(flatten(rows.mask), r->list("mask")) << what;
    EXPECT_EQ(rows.lengths, r->list("lengths")) << what;
    tasks.insert(r->at("name"));
    saw_wrap = saw_wrap || r->fields.count("note");
  }
  EXPECT_EQ(tasks.size(), 4u);
  EXPECT_TRUE(saw_wrap) << "no modular-arithmetic record that overflows int64";
}

TEST(FormalLanguageReference, DatasetSplitsAndExamplesAreTheOfficialOnes) {
  std::map<std::string, FormalLanguageDataset> datasets;
  for (const Record* r : records_of("dataset")) {
    datasets.emplace(r->at("id"), FormalLanguageDataset(dataset_config_of(*r)));
  }
  ASSERT_EQ(datasets.size(), 4u);
  std::map<std::string, std::vector<std::string>> split_order;
  for (const Record* r : records_of("split")) {
    const auto& split = datasets.at(r->at("dataset")).split(r->at("name"));
    EXPECT_EQ(split.split_seed(), std::uint64_t(r->integer("split_seed"))) << r->at("name");
    EXPECT_EQ(split.base_seed(), std::uint64_t(r->integer("base_seed"))) << r->at("name");
    split_order[r->at("dataset")].push_back(r->at("name"));
  }
  for (const auto& [id, data] : datasets) {
    std::vector<std::string> names;
    for (const auto& s : data.splits()) names.push_back(s.name());
    EXPECT_EQ(names, split_order[id]) << id;
  }
  int examples = 0;
  for (const Record* r : records_of("example")) {
    const auto& split = datasets.at(r->at("dataset")).split(r->at("split"));
    const auto example = split.example(r->integer("index"));
    const std::string what = r->at("dataset") + "/" + r->at("split") + "[" + r->at("index") + "]";
    EXPECT_EQ(example.input, r->list("input")) << what;
    EXPECT_EQ(example.target, r->list("target")) << what;
    ++examples;
  }
  EXPECT_GE(examples, 30);
}

// ---------------------------------------------------------------------------
// The task semantics, computed independently of the generator
// ---------------------------------------------------------------------------

TEST(FormalLanguageTasks, AnswersFollowTheTaskDefinitions) {
  for (std::uint64_t seed = 0; seed < 40; ++seed) {
    FormalLanguageTaskConfig c;
    c.context_length = 30;
    c.min_sequence_length = 3;
    c.max_sequence_length = 29;
    for (auto task :
         {FormalLanguageTask::parity, FormalLanguageTask::even_pairs,
          FormalLanguageTask::cycle_navigation, FormalLanguageTask::modular_arithmetic}) {
      c.task = task;
      c.vocab_size = task == FormalLanguageTask::cycle_navigation     ? 9
                     : task == FormalLanguageTask::modular_arithmetic ? 10
                                                                      : 3;
      const auto rows = xlstm::generate_formal_language(c, seed, 2);
      for (Index b = 0; b < 2; ++b) {
        const auto row = rows.tokens.row(b);
        const Index n = Index(rows.lengths[std::size_t(b)]);
        ASSERT_GE(n, 3);
        ASSERT_LE(n, 29);
        EXPECT_EQ(rows.mask.row(b).sum(), 1);
        EXPECT_EQ(rows.mask(b, n - 1), 1);
        for (Index t = n; t < c.context_length; ++t) EXPECT_EQ(row[t], 0);
        std::int64_t expected = 0;
        if (task == FormalLanguageTask::parity) {  // 1 + (number of 2s mod 2)
          expected = 1 + std::count(row.data(), row.data() + n - 1, 2) % 2;
        } else if (task == FormalLanguageTask::even_pairs) {  // 1 iff first == last
          expected = row[0] == row[n - 2] ? 1 : 2;
        } else if (task == FormalLanguageTask::cycle_navigation) {  // 1 stay, 2 +1, 3 -1 on 5
          int position = 0;
          for (Index t = 0; t < n - 1; ++t) position += row[t] == 2 ? 1 : row[t] == 3 ? -1 : 0;
          expected = 4 + ((position % 5) + 5) % 5;
        } else {  // n op n ... = : numbers 0..4 as 5..9, ops + - * as 1 2 3, '*' first
          EXPECT_EQ(row[n - 2], 4);
          std::vector<long long> terms{row[0] - 5};
          for (Index t = 1; t < n - 2; t += 2) {
            const long long number = row[t + 1] - 5;
            if (row[t] == 3) terms.back() *= number;
            if (row[t] == 1) terms.push_back(number);
            if (row[t] == 2) terms.push_back(-number);
          }
          long long sum = 0;
          for (auto term : terms) sum += term;  // |sum| < 5^14: no overflow at length 29
          expected = 5 + ((sum % 5) + 5) % 5;
        }
        EXPECT_EQ(row[n - 1], expected)
            << xlstm::formal_language_task_name(task) << " seed " << seed;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The transform by hand
// ---------------------------------------------------------------------------

TEST(FormalLanguageTransform, MaskAndShiftByHand) {
  // A parity sample of length 4 in a context of 6: bits 2 1 2, answer 1 + (2 mod 2) = 1.
  Tokens tokens(1, 6), mask(1, 6);
  tokens << 2, 1, 2, 1, 0, 0;
  mask << 0, 0, 0, 1, 0, 0;
  auto e = xlstm::make_formal_language_example(tokens, mask, 0, 1, true);
  EXPECT_EQ(e.input, (std::vector<std::int64_t>{2, 1, 2, 0, 0}));
  EXPECT_EQ(e.target, (std::vector<std::int64_t>{-1, -1, 1, -1, -1}));
  EXPECT_EQ(e.length, 3);  // the answer is predicted after reading 3 tokens
  e = xlstm::make_formal_language_example(tokens, mask, 0, 0, true);
  EXPECT_EQ(e.input, (std::vector<std::int64_t>{2, 1, 2, 0, 0, 0}));
  EXPECT_EQ(e.target, (std::vector<std::int64_t>{-1, -1, -1, 1, -1, -1}));
  EXPECT_EQ(e.length, 4);
  e = xlstm::make_formal_language_example(tokens, mask, 0, -2, true);
  EXPECT_EQ(e.input, (std::vector<std::int64_t>{2, 0, 0, 0}));
  EXPECT_EQ(e.target, (std::vector<std::int64_t>{-1, -1, -1, 1}));  // input[t] = token t + 2
  EXPECT_EQ(e.length, 4);
  e = xlstm::make_formal_language_example(tokens, mask, 0, 2, false);  // nothing masked
  EXPECT_EQ(e.input, (std::vector<std::int64_t>{2, 1, 2, 1}));
  EXPECT_EQ(e.target, (std::vector<std::int64_t>{2, 1, 0, 0}));
  EXPECT_EQ(e.length, 4);
}

// ---------------------------------------------------------------------------
// Batches, lengths, order
// ---------------------------------------------------------------------------

FormalLanguageDatasetConfig small_parity(std::int64_t train_count) {
  auto c = FormalLanguageDatasetConfig::official_parity();
  c.task.context_length = 48;
  c.task.max_sequence_length = 20;
  c.subparts = {{"validation", 21, 48}};
  c.train_count = train_count;
  c.validation_count = 16;
  c.test_count = 4;
  return c;
}

TEST(FormalLanguageBatch, LengthsMarkTheLastScoredTarget) {
  const FormalLanguageDataset data(small_parity(10));
  auto batch = xlstm::make_formal_language_batch(data.train(), {3, 0, 7});
  ASSERT_EQ(batch.batch(), 3);
  ASSERT_EQ(batch.time(), 47);
  for (Index b = 0; b < 3; ++b) {
    const Index length = batch.lengths[std::size_t(b)];
    EXPECT_EQ(length, batch.sequence_lengths[std::size_t(b)] - 1);  // shift 1, answer last
    EXPECT_NE(batch.targets(b, length - 1), -1);
    for (Index t = 0; t < 47; ++t) {
      if (t != length - 1) {
        EXPECT_EQ(batch.targets(b, t), -1);
      }
      if (t >= length) {
        EXPECT_EQ(batch.inputs(b, t), 0);
      }
    }
    const auto alone = data.train().example(batch.indices[std::size_t(b)]);
    EXPECT_EQ(
        std::vector<std::int64_t>(batch.inputs.row(b).data(), batch.inputs.row(b).data() + 47),
        alone.input);
  }
  const Index longest = *std::max_element(batch.lengths.begin(), batch.lengths.end());
  const Tokens before = batch.targets;
  batch.trim_to_longest();
  EXPECT_EQ(batch.time(), longest);
  EXPECT_EQ(xlstm::counted_targets(batch.targets), xlstm::counted_targets(before));
}

TEST(FormalLanguageBatch, LongestWidthAndReusedStorageGiveTheSameBatches) {
  const FormalLanguageDataset data(small_parity(10));
  xlstm::FormalLanguageBatches full(data.train(), 4);
  xlstm::FormalLanguageBatches narrow(data.train(), 4, xlstm::BatchOrder::sequential, 0,
                                      xlstm::BatchWidth::longest);
  xlstm::FormalLanguageBatch reused;
  for (int i = 0; i < 4; ++i) {  // a partial batch and a new pass included
    auto expected = full.next();
    narrow.next(reused);
    ASSERT_EQ(reused.indices, expected.indices);
    expected.trim_to_longest();
    EXPECT_EQ(reused.inputs, expected.inputs);
    EXPECT_EQ(reused.targets, expected.targets);
    EXPECT_EQ(reused.lengths, expected.lengths);
    EXPECT_EQ(reused.sequence_lengths, expected.sequence_lengths);
  }
}

TEST(FormalLanguageBatch, RaggedTrimmedForwardGivesTheFullLoss) {
  using S = double;
  const FormalLanguageDataset data(small_parity(10));
  xlstm::LanguageModel<S> model(test_util::lm_config(16, 2, {1}, 3, 48, 1));
  test_util::randomize(model, 7);
  const auto full = xlstm::make_formal_language_batch(data.train(), {0, 1, 2, 3, 4});
  auto trimmed = full;
  trimmed.trim_to_longest();
  ASSERT_LT(trimmed.time(), full.time());
  xlstm::Sequence<S> logits_full, logits_ragged;
  auto state = model.initial_state(full.batch());
  model.forward(full.inputs, state, logits_full);
  state = model.initial_state(full.batch());
  model.forward(trimmed.inputs, trimmed.lengths, state, logits_ragged);
  const S loss_full = xlstm::cross_entropy(logits_full, full.targets);
  const S loss_ragged = xlstm::cross_entropy(logits_ragged, trimmed.targets);
  EXPECT_NEAR(loss_ragged, loss_full, test_util::kWithParallelTol<S> * std::abs(loss_full));
  xlstm::SequenceAccuracy a_full, a_ragged;
  a_full.update(logits_full, full.targets);
  a_ragged.update(logits_ragged, trimmed.targets);
  EXPECT_EQ(a_full.correct(), a_ragged.correct());
  EXPECT_EQ(a_full.counted(), 5);
}

TEST(FormalLanguageBatch, SequentialOrderIsTheOfficialLoaders) {
  const FormalLanguageDataset data(small_parity(10));
  xlstm::FormalLanguageBatches batches(data.train(), 4);
  EXPECT_EQ(batches.next().indices, (std::vector<std::int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(batches.next().indices, (std::vector<std::int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(batches.next().indices, (std::vector<std::int64_t>{8, 9}));  // drop_last=False
  EXPECT_EQ(batches.pass(), 1);
  EXPECT_EQ(batches.next().indices, (std::vector<std::int64_t>{0, 1, 2, 3}));
}

TEST(FormalLanguageBatch, ShuffledOrderIsASeededPermutationPerPass) {
  const FormalLanguageDataset data(small_parity(10));
  auto one_pass = [](xlstm::FormalLanguageBatches& batches) {
    std::vector<std::int64_t> order;
    for (int i = 0; i < 3; ++i) {
      for (auto index : batches.next().indices) order.push_back(index);
    }
    return order;
  };
  xlstm::FormalLanguageBatches a(data.train(), 4, xlstm::BatchOrder::shuffled, 5);
  xlstm::FormalLanguageBatches b(data.train(), 4, xlstm::BatchOrder::shuffled, 5);
  xlstm::FormalLanguageBatches c(data.train(), 4, xlstm::BatchOrder::shuffled, 6);
  const auto a1 = one_pass(a), a2 = one_pass(a), b1 = one_pass(b), c1 = one_pass(c);
  std::vector<std::int64_t> sorted = a1;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(a1, b1);  // same seed, same order
  EXPECT_NE(a1, a2);  // a new permutation every pass
  EXPECT_NE(a1, c1);
}

// ---------------------------------------------------------------------------
// The metric by hand
// ---------------------------------------------------------------------------

xlstm::Sequence<float> logits_of(Index batch, Index time, std::vector<float> values) {
  xlstm::Sequence<float> s(batch, time, 3);
  for (Index i = 0; i < batch * time; ++i) {
    for (Index v = 0; v < 3; ++v) s.at(i / time, i % time)[v] = values[std::size_t(3 * i + v)];
  }
  return s;
}

TEST(FormalLanguageMetric, MicroAccuracyOverScoredPositionsByHand) {
  xlstm::SequenceAccuracy accuracy;
  // Batch 1: two rows of two steps; only (0, 1) and (1, 0) are scored.
  auto logits = logits_of(2, 2, {9, 0, 0, /**/ 0, 1, 3, /**/ 0, 5, 5, /**/ 7, 0, 0});
  Tokens targets(2, 2);
  targets << -1, 2, 1, -1;
  accuracy.update(logits, targets);  // argmax 2 = 2 right; tie 5, 5 -> first (1) = 1 right
  EXPECT_EQ(accuracy.correct(), 2);
  EXPECT_EQ(accuracy.counted(), 2);
  // Batch 2: one row, two scored steps, one right.
  auto more = logits_of(1, 2, {1, 2, 0, /**/ 1, 2, 0});
  Tokens more_targets(1, 2);
  more_targets << 1, 0;
  accuracy.update(more, more_targets);
  EXPECT_DOUBLE_EQ(accuracy.value(), 3.0 / 4.0);  // micro: not the mean (1 + 0.5) / 2 of batches
  EXPECT_DOUBLE_EQ(xlstm::scaled_accuracy(accuracy.value(), 0.5), 0.5);
  EXPECT_DOUBLE_EQ(xlstm::scaled_accuracy(0.5, 0.5), 0.0);
  accuracy.reset();
  EXPECT_EQ(accuracy.value(), 0.0);  // nothing counted: 0, as torchmetrics
}

TEST(FormalLanguageMetric, BucketsByHand) {
  xlstm::BucketedSequenceAccuracy accuracy(xlstm::parity_evaluation_buckets());
  // Four rows of one step; row 0 right (length 50), row 1 wrong (64), row 2
  // right (65), row 3 right but length 30, in no bucket.
  auto logits = logits_of(4, 1, {0, 1, 0, /**/ 0, 1, 0, /**/ 0, 0, 1, /**/ 0, 1, 0});
  Tokens targets(4, 1);
  targets << 1, 2, 2, 1;
  accuracy.update(logits, targets, {50, 64, 65, 30});
  EXPECT_EQ(accuracy.bucket(0).counted(), 2);
  EXPECT_DOUBLE_EQ(accuracy.bucket(0).value(), 0.5);
  EXPECT_EQ(accuracy.bucket(1).counted(), 1);
  EXPECT_DOUBLE_EQ(accuracy.bucket(1).value(), 1.0);
  EXPECT_EQ(accuracy.bucket(2).counted(), 0);
  EXPECT_DOUBLE_EQ(accuracy.overall().value(), 3.0 / 4.0);
}

TEST(FormalLanguageMetric, ChanceIsOneOverTheAnswerTokens) {
  FormalLanguageTaskConfig c;  // parity, vocab 3
  EXPECT_EQ(c.answer_classes(), 2);
  c.task = FormalLanguageTask::cycle_navigation;
  c.vocab_size = 9;
  EXPECT_EQ(c.answer_classes(), 5);  // the paper's chance 20 %
  c.task = FormalLanguageTask::modular_arithmetic;
  c.vocab_size = 10;
  EXPECT_EQ(c.answer_classes(), 5);
}

// ---------------------------------------------------------------------------
// Bad configs
// ---------------------------------------------------------------------------

TEST(FormalLanguageErrors, BadConfigsNameTheField) {
  auto generate = [](FormalLanguageTaskConfig c) {
    return [c] { xlstm::generate_formal_language(c, 0); };
  };
  FormalLanguageTaskConfig c;
  c.context_length = 20;
  c.vocab_size = 1;
  EXPECT_TRUE(ThrowsMentioning(generate(c), {"'vocab_size'", ">= 2", "got 1"}));
  c = {};
  c.context_length = 0;
  EXPECT_TRUE(ThrowsMentioning(generate(c), "'context_length'"));
  c = {};
  c.max_sequence_length = 21;
  EXPECT_TRUE(ThrowsMentioning(generate(c), {"'max_sequence_length'", "21"}));
  c = {};
  c.min_sequence_length = 12;
  c.max_sequence_length = 10;
  EXPECT_TRUE(ThrowsMentioning(generate(c), {"'min_sequence_length'", "12"}));
  c = {};
  c.task = FormalLanguageTask::even_pairs;
  c.min_sequence_length = 2;
  EXPECT_TRUE(ThrowsMentioning(generate(c), {"even_pairs", "'min_sequence_length'", ">= 3"}));
  c = {};
  c.task = FormalLanguageTask::cycle_navigation;
  c.vocab_size = 10;
  c.max_step_size = 7;  // clamped to 5: no cycle left
  EXPECT_TRUE(ThrowsMentioning(generate(c), {"'vocab_size'", ">= 13"}));
  c.max_step_size = -1;
  EXPECT_TRUE(ThrowsMentioning(generate(c), "'max_step_size'"));
  c = {};
  c.task = FormalLanguageTask::modular_arithmetic;
  c.vocab_size = 5;
  EXPECT_TRUE(ThrowsMentioning(generate(c), {"modular_arithmetic", "'vocab_size'", ">= 6"}));
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::parse_formal_language_task("majority"); },
                               {"'synth_lang_type'", "majority"}));

  auto build = [](FormalLanguageDatasetConfig d) { return [d] { FormalLanguageDataset data(d); }; };
  auto d = small_parity(10);
  d.train_count = -1;
  EXPECT_TRUE(ThrowsMentioning(build(d), {"'train'", "'count'"}));
  d = small_parity(10);
  d.shift = 48;
  EXPECT_TRUE(ThrowsMentioning(build(d), "'shift'"));
  d = small_parity(10);
  d.subparts = {{"valid", 3, 10}};
  EXPECT_TRUE(ThrowsMentioning(build(d), {"'valid'", "train, validation or test"}));
  d = small_parity(10);
  d.subparts = {{"validation", 3, 60}};
  EXPECT_TRUE(ThrowsMentioning(build(d), {"'validation'", "'max_sequence_length'", "60"}));

  const FormalLanguageDataset data(small_parity(10));
  EXPECT_TRUE(ThrowsMentioning([&] { data.train().example(10); }, {"'index'", "got 10"}));
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::FormalLanguageBatches(data.train(), 0); }, "'batch_size'"));
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::scaled_accuracy(0.5, 1.0); }, "'chance'"));
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::NumpyGenerator(0).integers(3, 3, 1); }, "'high'"));
  EXPECT_TRUE(ThrowsMentioning([] { xlstm::PythonRandom(0).randint(2, 1); }, "'b'"));
}

}  // namespace

}  // namespace xlstm_test_formal_language
