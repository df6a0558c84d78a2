// quantize_weights: replaces, in place, the large weight matrices of a module
// (LanguageModel, LargeModel, tirex::TiRexModel, any module with
// for_each_parameter) by quantised ones (math §16.3).
//
//   xlstm::quantize_weights(model, xlstm::WeightStorage::int8_rows);
//
// The rule (math §16.3), decided from what for_each_parameter gives (a name
// and, for weight matrices, the matrix): a weight matrix is quantised when
//  - it has at least options.min_elements elements: norms and biases are not
//    weight matrices and are never touched; small projections (e.g. the
//    xLSTM-7B gates, 4096 x 8) stay in their storage, where quantisation
//    would save nothing worth its error;
//  - none of its names contains "embedding" or "lm_head", unless
//    options.include_embedding_and_head: the token embedding and LM head
//    (NeurIPS "token_embedding", Large "embeddings", TiRex's patch
//    embeddings) see every token and the logits, so they stay exact by
//    default. A tied head (the embedding listed again) is one matrix: it is
//    kept if any of its names is;
//  - for q4_g32, its input dimension is a multiple of 32 (else it is kept,
//    and counted in the report).
// The model's products then run the quantised kernels; it cannot be trained
// (backward refuses). The savers write it as a quantised checkpoint
// (math §16.4), and the loaders apply the same rule while loading a float or
// 16-bit checkpoint (io::LoadOptions::quantize), without a float copy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/weight_matrix.hpp"

namespace xlstm {

struct QuantizeOptions {
  /// Weight matrices with fewer elements are kept.
  std::size_t min_elements = std::size_t(1) << 16;
  /// Quantise the token embedding / patch embeddings and the LM head too.
  bool include_embedding_and_head = false;
};

/// Whether `name` is a token embedding, patch embedding or LM head: the
/// matrices QuantizeOptions::include_embedding_and_head decides about.
inline bool is_embedding_or_head(const std::string& name) {
  return name.find("embedding") != std::string::npos || name.find("lm_head") != std::string::npos;
}

/// Whether `options` keep the matrix called `name` as it is for its name alone:
/// an embedding or head, unless options.include_embedding_and_head.
inline bool kept_by_name(const std::string& name, const QuantizeOptions& options) {
  return is_embedding_or_head(name) && !options.include_embedding_and_head;
}

/// Whether a rows x cols weight matrix is big enough for `options` and has a
/// shape `format` can hold (q4_g32: cols a multiple of 32).
inline bool quantizable_shape(Index rows, Index cols, WeightStorage format,
                              const QuantizeOptions& options) {
  const bool big = std::size_t(rows) * std::size_t(cols) >= options.min_elements;
  return big && (format != WeightStorage::q4_g32 || cols % kernels::kQ4Group == 0);
}

/// What quantize_weights did.
struct QuantizeReport {
  std::vector<std::string> quantized;             ///< names of the quantised matrices
  std::vector<std::string> kept;                  ///< weight matrices left as they were
  std::size_t bytes_before = 0, bytes_after = 0;  ///< of all weight matrices
};

/// Quantises the weight matrices of `module` that the rule above selects to
/// `format` (int8_rows or q4_g32), in place. Each matrix is quantised from its
/// current storage row by row (WeightMatrix::quantized), so peak memory is
/// one matrix in both forms, never a float copy of the model.
template <typename Module>
QuantizeReport quantize_weights(Module& module, WeightStorage format,
                                const QuantizeOptions& options = {}) {
  check(format == WeightStorage::int8_rows || format == WeightStorage::q4_g32,
        "quantize_weights: argument 'format' must be int8_rows or q4_g32, got ",
        storage_name(format));
  using Scalar = typename Module::Scalar;
  struct Entry {
    WeightMatrix<Scalar>* matrix;
    std::string name;
    bool excluded;
  };
  std::vector<Entry> entries;
  module.for_each_parameter([&](const auto& p) {
    if (!p.matrix) return;
    const bool excluded = kept_by_name(p.name, options);
    auto it = std::find_if(entries.begin(), entries.end(),
                           [&](const Entry& e) { return e.matrix == p.matrix; });
    if (it == entries.end()) {
      entries.push_back({p.matrix, p.name, excluded});
    } else {
      it->excluded = it->excluded || excluded;  // a tied matrix: kept if any name is
    }
  });
  QuantizeReport report;
  for (Entry& e : entries) {
    WeightMatrix<Scalar>& w = *e.matrix;
    report.bytes_before += w.bytes();
    if (e.excluded || !quantizable_shape(w.rows(), w.cols(), format, options) ||
        w.storage() == format) {
      if (w.storage() == format) {
        report.quantized.push_back(e.name);
      } else {
        report.kept.push_back(e.name);
      }
      report.bytes_after += w.bytes();
      continue;
    }
    w = WeightMatrix<Scalar>::quantized(w, format);
    report.quantized.push_back(e.name);
    report.bytes_after += w.bytes();
  }
  return report;
}

}  // namespace xlstm
