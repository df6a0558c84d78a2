// The official formal-language dataset (`FormLangDatasetGenerator` and
// `FormLangDataset` of the xLSTM experiments, math §15.4-§15.5): the train,
// validation and test splits with their seeds, each sample generated on
// demand from its own seed, and the transform that turns a sample into model
// input and targets (answer masked in the input, targets −1 except at the
// answer, shifted by one).
//
//   const xlstm::FormalLanguageDataset data(xlstm::FormalLanguageDatasetConfig::official_parity());
//   const auto example = data.train().example(0);   // input, target, length
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/train/formal_language_task.hpp"
#include "xlstm/train/numpy_generator.hpp"
#include "xlstm/train/python_random.hpp"

namespace xlstm {

/// One entry of the official `subpar` mapping: a part of the train,
/// validation or test subset (its name starts with the subset's name) with
/// its own sequence lengths. A subset with parts consists of those parts.
struct FormalLanguageSubpart {
  std::string name;
  std::optional<std::int64_t> min_sequence_length;
  std::optional<std::int64_t> max_sequence_length;
};

/// The official `FormLangDatasetConfig` fields this library supports (no
/// extra prefix, suffix or pre-mask tokens). Defaults are the official ones,
/// so `enable_mask` is off; the paper's configs switch it on
/// (`official_parity`).
struct FormalLanguageDatasetConfig {
  FormalLanguageTaskConfig task;
  std::int64_t seed = 42;
  std::int64_t train_count = 1;
  std::int64_t validation_count = 1;
  std::int64_t test_count = 1;
  std::vector<FormalLanguageSubpart> subparts;  // in the order of the yaml mapping
  std::int64_t shift = 1;
  bool enable_mask = false;

  /// The dataset of `experiments/parity_xlstm{01,10,11}.yaml`: parity,
  /// vocab 3, context 256, train lengths 3–40 (20,000 × 256 samples),
  /// validation and test 8,192 samples of lengths 40–256, seed 1.
  static FormalLanguageDatasetConfig official_parity() {
    FormalLanguageDatasetConfig config;
    config.task.task = FormalLanguageTask::parity;
    config.task.vocab_size = 3;
    config.task.context_length = 256;
    config.task.min_sequence_length = 3;
    config.task.max_sequence_length = 40;
    config.seed = 1;
    config.train_count = 5120000;
    config.validation_count = 8192;
    config.test_count = 8192;
    config.subparts = {{"validation", 40, 256}, {"test", 40, 256}};
    config.enable_mask = true;
    return config;
  }
};

/// One transformed sample: `input` and `target` of equal length
/// (context_length − |shift|), `length` = position of the last target that
/// counts (≠ −1) + 1, or 0 if none counts (math §15.5).
struct FormalLanguageExample {
  std::vector<std::int64_t> input;
  std::vector<std::int64_t> target;
  Index length = 0;
  Index sequence_length = 0;  // the task's length of the sample (answer at length − 1)
};

/// `FormLangDataset.__getitem__` on row `row` of `tokens` / `mask` (math
/// §15.5): with the mask on, the input has padding 0 where the mask is 1
/// and the target has −1 where it is 0; a positive shift pairs input[t]
/// with the token at t + shift (the input loses its last `shift` positions,
/// the target its first), a negative shift the other way round. Writes into
/// `example`, reusing its storage; `sequence_length` is left as it was.
inline void make_formal_language_example(const Tokens& tokens, const Tokens& mask, Index row,
                                         std::int64_t shift, bool enable_mask,
                                         FormalLanguageExample& example) {
  const Index n = tokens.cols();
  check(mask.rows() == tokens.rows() && mask.cols() == n,
        "make_formal_language_example: 'mask' must be ", tokens.rows(), " x ", n, ", got ",
        mask.rows(), " x ", mask.cols());
  check(row >= 0 && row < tokens.rows(), "make_formal_language_example: 'row' must be in [0, ",
        tokens.rows(), "), got ", row);
  check(shift > -n && shift < n, "make_formal_language_example: 'shift' must be in (", -n, ", ", n,
        "), got ", shift);
  constexpr std::int64_t kPad = 0, kIgnore = -1;
  const Index kept = n - Index(shift < 0 ? -shift : shift);
  const Index input_from = shift < 0 ? Index(-shift) : 0;
  const Index target_from = shift > 0 ? Index(shift) : 0;
  example.input.resize(std::size_t(kept));
  example.target.resize(std::size_t(kept));
  example.length = 0;
  for (Index t = 0; t < kept; ++t) {
    const Index i = input_from + t, o = target_from + t;
    const bool masked_in = mask(row, i) == 1, masked_out = mask(row, o) == 1;
    example.input[std::size_t(t)] = enable_mask && masked_in ? kPad : tokens(row, i);
    example.target[std::size_t(t)] = !enable_mask || masked_out ? tokens(row, o) : kIgnore;
    if (example.target[std::size_t(t)] != kIgnore) example.length = t + 1;
  }
}

/// The same, returning a new example.
inline FormalLanguageExample make_formal_language_example(const Tokens& tokens, const Tokens& mask,
                                                          Index row, std::int64_t shift,
                                                          bool enable_mask) {
  FormalLanguageExample example;
  make_formal_language_example(tokens, mask, row, shift, enable_mask, example);
  return example;
}

/// One split (or subset part) of a dataset: `count` samples, sample i drawn
/// by the task with seed base_seed + i, where base_seed =
/// default_rng(split_seed).integers(2^32 − count) (`OnlineTaskGenerate`).
class FormalLanguageSplit {
 public:
  FormalLanguageSplit(std::string name, FormalLanguageTaskConfig task, std::int64_t count,
                      std::uint64_t split_seed, std::int64_t shift, bool enable_mask)
      : name_(std::move(name)),
        task_(task),
        count_(count),
        split_seed_(split_seed),
        shift_(shift),
        enable_mask_(enable_mask) {
    task_.validate();
    check(count >= 0 && count < (std::int64_t(1) << 32), "FormalLanguageSplit '", name_,
          "': 'count' must be in [0, 2^32), got ", count);
    check(shift > -task_.context_length && shift < task_.context_length, "FormalLanguageSplit '",
          name_, "': 'shift' must be in (", -task_.context_length, ", ", task_.context_length,
          "), got ", shift);
    base_seed_ =
        std::uint64_t(NumpyGenerator(split_seed).integer(0, (std::int64_t(1) << 32) - count));
  }

  const std::string& name() const { return name_; }
  const FormalLanguageTaskConfig& task() const { return task_; }
  std::int64_t count() const { return count_; }
  std::uint64_t split_seed() const { return split_seed_; }
  std::uint64_t base_seed() const { return base_seed_; }
  std::int64_t shift() const { return shift_; }
  bool enable_mask() const { return enable_mask_; }
  /// Length of every example's input and target.
  Index example_length() const {
    return Index(task_.context_length - (shift_ < 0 ? -shift_ : shift_));
  }

  /// Sample `index` as the task drew it (one row: tokens, mask, length).
  FormalLanguageRows rows(std::int64_t index) const {
    check(index >= 0 && index < count_, "FormalLanguageSplit '", name_,
          "': 'index' must be in [0, ", count_, "), got ", index);
    return generate_formal_language(task_, base_seed_ + std::uint64_t(index), 1);
  }

  /// Sample `index` transformed as the official dataset returns it,
  /// written into `example` (its storage reused).
  void example(std::int64_t index, FormalLanguageExample& example) const {
    const FormalLanguageRows drawn = rows(index);
    make_formal_language_example(drawn.tokens, drawn.mask, 0, shift_, enable_mask_, example);
    example.sequence_length = Index(drawn.lengths[0]);
  }

  /// The same, returning a new example.
  FormalLanguageExample example(std::int64_t index) const {
    FormalLanguageExample out;
    example(index, out);
    return out;
  }

 private:
  std::string name_;
  FormalLanguageTaskConfig task_;
  std::int64_t count_ = 0;
  std::uint64_t split_seed_ = 0;
  std::uint64_t base_seed_ = 0;
  std::int64_t shift_ = 1;
  bool enable_mask_ = false;
};

/// All splits of a config, in the official order (train, validation, test;
/// within a subset its parts in config order), each with the seed the
/// official `_generate_seeds` gives it: random.Random(seed).randint(0, 2^32)
/// drawn once per split in that order (math §15.4).
class FormalLanguageDataset {
 public:
  explicit FormalLanguageDataset(const FormalLanguageDatasetConfig& config) {
    const char* subsets[] = {"train", "validation", "test"};
    const std::int64_t counts[] = {config.train_count, config.validation_count, config.test_count};
    for (const auto& part : config.subparts) {
      bool known = false;
      for (const char* subset : subsets) known = known || part.name.rfind(subset, 0) == 0;
      check(known, "FormalLanguageDataset: subpart name '", part.name,
            "' must start with train, validation or test");
      for (const auto& other : config.subparts) {
        check(&other == &part || other.name != part.name, "FormalLanguageDataset: subpart name '",
              part.name, "' appears twice");
      }
    }
    PythonRandom seeds(config.seed);
    for (int s = 0; s < 3; ++s) {
      std::vector<FormalLanguageSubpart> parts;
      for (const auto& part : config.subparts) {
        if (part.name.rfind(subsets[s], 0) == 0) parts.push_back(part);
      }
      if (parts.empty()) parts.push_back({subsets[s], std::nullopt, std::nullopt});
      for (const auto& part : parts) {
        FormalLanguageTaskConfig task = config.task;
        if (part.min_sequence_length) task.min_sequence_length = part.min_sequence_length;
        if (part.max_sequence_length) task.max_sequence_length = part.max_sequence_length;
        const auto split_seed = std::uint64_t(seeds.randint(0, std::int64_t(1) << 32));
        try {
          splits_.emplace_back(part.name, task, counts[s], split_seed, config.shift,
                               config.enable_mask);
        } catch (const Error& e) {
          fail("FormalLanguageDataset: split '", part.name, "': ", e.what());
        }
      }
    }
  }

  /// Every split in the official order.
  const std::vector<FormalLanguageSplit>& splits() const { return splits_; }

  const FormalLanguageSplit& split(const std::string& name) const {
    for (const auto& s : splits_) {
      if (s.name() == name) return s;
    }
    fail("FormalLanguageDataset: no split named '", name, "'");
  }

  const FormalLanguageSplit& train() const { return splits_.front(); }
  std::vector<const FormalLanguageSplit*> validation() const { return subset("validation"); }
  std::vector<const FormalLanguageSplit*> test() const { return subset("test"); }

 private:
  std::vector<const FormalLanguageSplit*> subset(const std::string& prefix) const {
    std::vector<const FormalLanguageSplit*> out;
    for (const auto& s : splits_) {
      if (s.name().rfind(prefix, 0) == 0) out.push_back(&s);
    }
    return out;
  }

  std::vector<FormalLanguageSplit> splits_;
};

}  // namespace xlstm
