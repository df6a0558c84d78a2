// The four formal-language tasks of the official xLSTM experiments (math
// §15.3): parity, even pairs, cycle navigation and modular arithmetic without
// brackets. Given a task config and a seed, `generate_formal_language` draws
// the same rows as the official task function called with that seed: tokens
// (0 is padding), the mask with a 1 at the answer position, and each row's
// sequence length (the answer sits at length − 1).
//
//   xlstm::FormalLanguageTaskConfig parity;   // vocab 3
//   parity.context_length = 256;
//   parity.min_sequence_length = 3;
//   parity.max_sequence_length = 40;
//   const auto rows = xlstm::generate_formal_language(parity, seed);
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/train/numpy_generator.hpp"

namespace xlstm {

enum class FormalLanguageTask { parity, even_pairs, cycle_navigation, modular_arithmetic };

/// The official `synth_lang_type` name of a task.
inline const char* formal_language_task_name(FormalLanguageTask task) {
  switch (task) {
    case FormalLanguageTask::parity:
      return "parity";
    case FormalLanguageTask::even_pairs:
      return "even_pairs";
    case FormalLanguageTask::cycle_navigation:
      return "cycle_navigation";
    case FormalLanguageTask::modular_arithmetic:
      return "modular_arithmetic";
  }
  return "?";
}

/// The task of an official `synth_lang_type` name.
inline FormalLanguageTask parse_formal_language_task(const std::string& name) {
  for (auto task : {FormalLanguageTask::parity, FormalLanguageTask::even_pairs,
                    FormalLanguageTask::cycle_navigation, FormalLanguageTask::modular_arithmetic}) {
    if (name == formal_language_task_name(task)) return task;
  }
  fail("parse_formal_language_task: 'synth_lang_type' must be one of parity, even_pairs, ",
       "cycle_navigation, modular_arithmetic, got '", name, "'");
}

/// The arguments of an official task function (batch size and seed aside).
/// An unset length takes the official default: max = context_length,
/// min = max.
struct FormalLanguageTaskConfig {
  FormalLanguageTask task = FormalLanguageTask::parity;
  std::int64_t vocab_size = 3;
  std::int64_t context_length = 20;
  std::optional<std::int64_t> min_sequence_length;
  std::optional<std::int64_t> max_sequence_length;
  std::int64_t max_step_size = 1;  // cycle navigation only

  std::int64_t max_length() const { return max_sequence_length.value_or(context_length); }
  std::int64_t min_length() const { return min_sequence_length.value_or(max_length()); }

  /// Cycle navigation's step bound as the official code clamps it.
  std::int64_t effective_max_step_size() const { return std::min(vocab_size / 2, max_step_size); }

  /// How many answer tokens the task has; 1 / this is the accuracy of a
  /// uniform guess, the s_rand of the paper's scaled accuracy (math §15.6).
  std::int64_t answer_classes() const {
    switch (task) {
      case FormalLanguageTask::parity:
      case FormalLanguageTask::even_pairs:
        return vocab_size - 1;
      case FormalLanguageTask::cycle_navigation:
        return vocab_size - 2 - 2 * effective_max_step_size();
      case FormalLanguageTask::modular_arithmetic:
        return vocab_size - 5;
    }
    return 0;
  }

  /// Throws xlstm::Error naming the first field outside what the official
  /// generator handles (math §15.3 lists the limits and why).
  void validate() const {
    const char* where = formal_language_task_name(task);
    const std::int64_t min_vocab =
        task == FormalLanguageTask::modular_arithmetic ? 6
        : task == FormalLanguageTask::cycle_navigation
            ? 3 + 2 * std::max<std::int64_t>(effective_max_step_size(), 0)
            : 2;
    check(task != FormalLanguageTask::cycle_navigation || max_step_size >= 0, where,
          ": 'max_step_size' must be >= 0, got ", max_step_size);
    check(vocab_size >= min_vocab, where, ": 'vocab_size' must be >= ", min_vocab, ", got ",
          vocab_size);
    check(context_length >= 1, where, ": 'context_length' must be >= 1, got ", context_length);
    const std::int64_t shortest =
        task == FormalLanguageTask::even_pairs || task == FormalLanguageTask::modular_arithmetic
            ? 3
            : 1;
    check(max_length() <= context_length, where,
          ": 'max_sequence_length' must be <= ", "'context_length' (", context_length, "), got ",
          max_length());
    check(max_length() >= shortest, where, ": 'max_sequence_length' must be >= ", shortest,
          ", got ", max_length());
    check(min_length() >= shortest, where, ": 'min_sequence_length' must be >= ", shortest,
          ", got ", min_length());
    check(min_length() <= max_length(), where,
          ": 'min_sequence_length' must be <= ", "'max_sequence_length' (", max_length(), "), got ",
          min_length());
  }
};

/// Rows drawn by one call of a task function: `tokens` and `mask` are
/// batch x context_length; `lengths[b]` is row b's sequence length.
struct FormalLanguageRows {
  Tokens tokens;
  Tokens mask;
  std::vector<std::int64_t> lengths;
};

namespace detail {

/// Python's `%` for a positive modulus: the result is in [0, modulus).
inline std::int64_t floor_mod(std::int64_t value, std::int64_t modulus) {
  const std::int64_t r = value % modulus;
  return r < 0 ? r + modulus : r;
}

/// Evaluates `n0 op n1 op ... ` (positions 0 .. end-1 of `row`, numbers as
/// token − 5, ops 1 '+', 2 '-', 3 '*') with '*' binding tighter, in numpy's
/// int64 arithmetic: products wrap modulo 2^64 (numpy only warns), so the
/// sum is formed in uint64 and read back as two's complement.
inline std::int64_t evaluate_modular_expression(const Tokens& tokens, Index row, Index end) {
  std::uint64_t total = 0;
  std::uint64_t product = std::uint64_t(tokens(row, 0) - 5);
  bool negative = false;
  for (Index t = 1; t < end; t += 2) {
    const std::int64_t op = tokens(row, t);
    if (op != 3) {  // '+' or '-' closes the running product
      total += negative ? std::uint64_t(0) - product : product;
      product = 1;
      negative = op == 2;
    }
    if (t + 1 < end) product *= std::uint64_t(tokens(row, t + 1) - 5);
  }
  total += negative ? std::uint64_t(0) - product : product;
  return std::int64_t(total);
}

}  // namespace detail

/// The official task function `<task>(batch_size=batch, seed=seed, ...)`
/// (math §15.3): the same numpy draws in the same order, the same rows.
inline FormalLanguageRows generate_formal_language(const FormalLanguageTaskConfig& config,
                                                   std::uint64_t seed, Index batch = 1) {
  config.validate();
  check(batch >= 1, "generate_formal_language: 'batch' must be >= 1, got ", batch);
  NumpyGenerator rng(seed);
  const Index context = Index(config.context_length);
  const std::int64_t vocab = config.vocab_size;
  FormalLanguageRows rows;
  rows.tokens = Tokens::Zero(batch, context);
  rows.mask = Tokens::Zero(batch, context);
  auto fill = [&](Index first_column, Index column_step, Index columns, std::int64_t low,
                  std::int64_t high, std::int64_t offset) {
    const auto draws = rng.integers(low, high, std::size_t(batch * columns));
    for (Index b = 0; b < batch; ++b) {
      for (Index c = 0; c < columns; ++c) {
        rows.tokens(b, first_column + c * column_step) =
            draws[std::size_t(b * columns + c)] + offset;
      }
    }
  };
  auto draw_lengths = [&](std::int64_t low, std::int64_t high) {
    rows.lengths = rng.integers(low, high, std::size_t(batch));
  };
  const std::int64_t min_len = config.min_length(), max_len = config.max_length();
  switch (config.task) {
    case FormalLanguageTask::parity:
      fill(0, 1, context - 1, 1, vocab, 0);
      draw_lengths(min_len, max_len + 1);
      break;
    case FormalLanguageTask::even_pairs:
      fill(0, 1, context - 1, 0, vocab - 1, 1);
      draw_lengths(min_len, max_len + 1);
      break;
    case FormalLanguageTask::cycle_navigation:
      fill(0, 1, context, 0, 2 * config.effective_max_step_size() + 1, 1);
      draw_lengths(min_len, max_len + 1);
      break;
    case FormalLanguageTask::modular_arithmetic: {
      fill(0, 1, context, 0, vocab - 5, 5);
      fill(1, 2, context / 2, 0, 3, 1);
      const std::int64_t half_min = std::min((min_len + 1) / 2, (max_len + 1) / 2);
      draw_lengths(half_min, (max_len + 1) / 2 + 1);
      for (auto& length : rows.lengths) length = 2 * length - 1;  // odd: n (op n)* = answer
      break;
    }
  }
  for (Index b = 0; b < batch; ++b) {
    const Index length = Index(rows.lengths[std::size_t(b)]);
    const Index answer_at = length - 1;
    auto row = rows.tokens.row(b);
    std::int64_t answer = 0;
    switch (config.task) {
      case FormalLanguageTask::parity: {
        // Count of 2s mod 2 for vocab 3: the sum of (token − 1) mod (V − 1), + 1.
        std::int64_t sum = 0;
        for (Index t = 0; t < answer_at; ++t) sum += row[t] - 1;
        answer = sum % (vocab - 1) + 1;
        break;
      }
      case FormalLanguageTask::even_pairs:
        // The official cumulative sum of neighbour differences telescopes to
        // last − first of the tokens before the answer.
        answer = std::abs(row[length - 2] - row[0]) + 1;
        break;
      case FormalLanguageTask::cycle_navigation: {
        // Tokens 1 .. m+1 step 0 .. m, tokens m+2 .. 2m+1 step −1 .. −m.
        const std::int64_t m = config.effective_max_step_size();
        std::int64_t position = 0;
        for (Index t = 0; t < answer_at; ++t) {
          position += row[t] <= m + 1 ? row[t] - 1 : m + 1 - row[t];
        }
        answer = detail::floor_mod(position, config.answer_classes()) + 2 * m + 2;
        break;
      }
      case FormalLanguageTask::modular_arithmetic:
        row[length - 2] = 4;  // '='
        answer = detail::floor_mod(detail::evaluate_modular_expression(rows.tokens, b, length - 2),
                                   vocab - 5) +
                 5;
        break;
    }
    row.tail(context - answer_at).setZero();
    row[answer_at] = answer;
    rows.mask(b, answer_at) = 1;
  }
  return rows;
}

}  // namespace xlstm
