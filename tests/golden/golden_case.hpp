// One golden file (tests/data/golden/README.md): its metadata, typed access to its tensors and
// the comparison of computed outputs with the per-tensor tolerances.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/core/tensor.hpp"
#include "xlstm/io/safetensors.hpp"

namespace golden {

using xlstm::Index;
using xlstm::Sequence;

class GoldenCase {
 public:
  explicit GoldenCase(const std::string& path) : file_(xlstm::io::SafetensorsFile::open(path)) {
    const auto& meta = file_.metadata();
    auto get = [&](const char* key) -> std::string {
      auto it = meta.find(key);
      if (it == meta.end()) xlstm::fail(path, ": golden metadata has no '", key, "'");
      return it->second;
    };
    xlstm::check(get("format") == "xlstm-golden/1", path, ": unknown golden format '",
                 get("format"), "'");
    kind_ = get("kind");
    dtype_ = get("dtype");
    config_ = nlohmann::json::parse(get("config"));
    file_atol_ = std::stod(get("atol"));
    file_rtol_ = std::stod(get("rtol"));
    read_tolerances(meta, "tolerances", tolerances_);
    read_tolerances(meta, "tolerances_tight", tight_tolerances_);
  }

  const xlstm::io::SafetensorsFile& file() const { return file_; }
  const std::string& kind() const { return kind_; }
  const std::string& dtype() const { return dtype_; }
  const nlohmann::json& config() const { return config_; }
  bool has(const std::string& name) const { return file_.contains(name); }
  std::string meta(const std::string& key) const {
    auto it = file_.metadata().find(key);
    return it == file_.metadata().end() ? std::string() : it->second;
  }

  xlstm::Shape shape(const std::string& name) const { return file_.info(name).shape; }

  template <typename Scalar>
  std::vector<Scalar> values(const std::string& name) const {
    return file_.read<Scalar>(name);
  }

  /// A (B, T, D) tensor as a Sequence.
  template <typename Scalar>
  Sequence<Scalar> sequence(const std::string& name) const {
    const auto s = shape(name);
    EXPECT_EQ(s.size(), 3u) << name;
    Sequence<Scalar> out{Index(s[0]), Index(s[1]), Index(s[2])};
    file_.read_into<Scalar>(name, out.matrix().data(), out.matrix().size());
    return out;
  }

  /// A (B, NH, T, DH) tensor as a head-major (B, T, NH*DH) Sequence.
  template <typename Scalar>
  Sequence<Scalar> heads_sequence(const std::string& name) const {
    const auto s = shape(name);
    EXPECT_EQ(s.size(), 4u) << name;
    const Index b = Index(s[0]), nh = Index(s[1]), t = Index(s[2]), dh = Index(s[3]);
    const auto v = values<Scalar>(name);
    Sequence<Scalar> out(b, t, nh * dh);
    for (Index bi = 0; bi < b; ++bi)
      for (Index h = 0; h < nh; ++h)
        for (Index ti = 0; ti < t; ++ti)
          for (Index j = 0; j < dh; ++j)
            out(bi, ti, h * dh + j) = v[std::size_t(((bi * nh + h) * t + ti) * dh + j)];
    return out;
  }

  /// Compares computed values (in the stored tensor's layout) with tensor
  /// `name`: |b - g| <= atol + rtol |g| elementwise with the tensor's own
  /// tolerances (golden README §3). A file with a tight tier also records
  /// whether the values are within it (golden README §12.3); that is
  /// reported, not asserted (tight_pass()).
  ///
  /// `slack` widens atol by a difference the file documents between two
  /// computations of the same quantity (e.g. its max_abs_diff_grad_* metadata
  /// when another form of the mLSTM cell is checked against it); `label`
  /// names that computation in the report.
  void compare(const std::string& name, const std::vector<double>& computed, double slack = 0,
               const std::string& label = "") {
    checked_.insert(name);
    const auto golden = values<double>(name);
    ASSERT_EQ(computed.size(), golden.size()) << name << ": element count";
    auto [atol, rtol] = tolerance(name);
    atol = std::max(atol, slack);
    const Worst worst = worst_ratio(computed, golden, atol, rtol);
    std::printf("    %-44s worst |b-g|/(atol+rtol|g|) = %.3g  (atol %.3g, rtol %.3g)",
                (label.empty() ? name : label + " " + name).c_str(), worst.ratio, atol, rtol);
    auto tight = tight_tolerances_.find(name);
    if (tight != tight_tolerances_.end()) {
      const double tight_ratio =
          worst_ratio(computed, golden, tight->second.first, tight->second.second).ratio;
      std::printf("  tight %.3g  max|b-g| %.3g", tight_ratio, max_abs_diff(computed, golden));
      if (!(tight_ratio <= 1.0)) tight_pass_ = false;
    }
    std::printf("\n");
    EXPECT_LE(worst.ratio, 1.0) << label << " " << name << ": element " << worst.at << " computed "
                                << computed[worst.at] << ", golden " << golden[worst.at];
  }

  /// max |b - g| of computed values against tensor `name` (for information).
  double max_abs_diff(const std::string& name, const std::vector<double>& computed) const {
    const auto golden = values<double>(name);
    EXPECT_EQ(computed.size(), golden.size()) << name << ": element count";
    return computed.size() == golden.size() ? max_abs_diff(computed, golden) : INFINITY;
  }

  /// The worst |b - g| / (atol + rtol |g|) of computed values against tensor
  /// `name` at its tolerances, or at its tight tolerances with `tight`, without
  /// a test verdict (for information).
  double worst_ratio(const std::string& name, const std::vector<double>& computed,
                     bool tight = false) const {
    const auto golden = values<double>(name);
    EXPECT_EQ(computed.size(), golden.size()) << name << ": element count";
    if (computed.size() != golden.size()) return INFINITY;
    auto it = tight_tolerances_.find(name);
    const auto [atol, rtol] = tight && it != tight_tolerances_.end() ? it->second : tolerance(name);
    return worst_ratio(computed, golden, atol, rtol).ratio;
  }

  /// Whether the file has a tight tolerance tier (`tolerances_tight`).
  bool has_tight_tier() const { return !tight_tolerances_.empty(); }
  /// Whether every compared tensor with a tight tolerance was within it.
  bool tight_pass() const { return tight_pass_; }

  template <typename Scalar>
  void compare(const std::string& name, const Sequence<Scalar>& computed) {
    compare(name, to_double(computed.matrix()));
  }

  /// Compares a head-major (B, T, NH*DH) Sequence with a (B, NH, T, DH) tensor.
  template <typename Scalar>
  void compare_heads(const std::string& name, const Sequence<Scalar>& computed) {
    compare(name, in_heads_layout(name, computed));
  }

  /// A head-major (B, T, NH*DH) Sequence in the layout of the (B, NH, T, DH)
  /// tensor `name`.
  template <typename Scalar>
  std::vector<double> in_heads_layout(const std::string& name,
                                      const Sequence<Scalar>& computed) const {
    const auto s = shape(name);
    EXPECT_EQ(s.size(), 4u) << name;
    if (s.size() != 4) return {};
    const Index b = Index(s[0]), nh = Index(s[1]), t = Index(s[2]), dh = Index(s[3]);
    std::vector<double> out(std::size_t(b * nh * t * dh));
    for (Index bi = 0; bi < b; ++bi)
      for (Index h = 0; h < nh; ++h)
        for (Index ti = 0; ti < t; ++ti)
          for (Index j = 0; j < dh; ++j)
            out[std::size_t(((bi * nh + h) * t + ti) * dh + j)] =
                double(computed(bi, ti, h * dh + j));
    return out;
  }

  template <typename Derived>
  static std::vector<double> to_double(const Eigen::DenseBase<Derived>& m) {
    std::vector<double> out;
    out.reserve(std::size_t(m.size()));
    // Row-major traversal, the layout of the stored tensors.
    for (Index r = 0; r < m.rows(); ++r)
      for (Index c = 0; c < m.cols(); ++c) out.push_back(double(m(r, c)));
    return out;
  }

  /// Every output.*, state_out.* and grad.* tensor must have been compared.
  void expect_all_outputs_compared() const {
    for (const auto& name : file_.names()) {
      if (name.rfind("output.", 0) == 0 || name.rfind("state_out.", 0) == 0 ||
          name.rfind("grad.", 0) == 0) {
        EXPECT_TRUE(checked_.count(name)) << "golden tensor " << name << " was not checked";
      }
    }
  }

 private:
  using Tolerances = std::map<std::string, std::pair<double, double>>;

  struct Worst {
    double ratio = 0;
    std::size_t at = 0;
  };

  /// The per-tensor [atol, rtol] pairs of metadata entry `key`, if present.
  static void read_tolerances(const std::map<std::string, std::string>& meta, const char* key,
                              Tolerances& out) {
    auto entry = meta.find(key);
    if (entry == meta.end()) return;
    const auto tolerances = nlohmann::json::parse(entry->second);
    for (auto it = tolerances.begin(); it != tolerances.end(); ++it) {
      out[it.key()] = {it.value().at(0).get<double>(), it.value().at(1).get<double>()};
    }
  }

  /// The largest |b - g| / (atol + rtol |g|) and where it is; NaN counts as infinite.
  static Worst worst_ratio(const std::vector<double>& computed, const std::vector<double>& golden,
                           double atol, double rtol) {
    Worst worst;
    for (std::size_t i = 0; i < golden.size(); ++i) {
      const double ratio = std::abs(computed[i] - golden[i]) / (atol + rtol * std::abs(golden[i]));
      if (!(ratio <= worst.ratio)) {  // also catches NaN
        worst.ratio = std::isnan(ratio) ? INFINITY : ratio;
        worst.at = i;
      }
    }
    return worst;
  }

  static double max_abs_diff(const std::vector<double>& computed,
                             const std::vector<double>& golden) {
    double worst = 0;
    for (std::size_t i = 0; i < golden.size(); ++i) {
      const double diff = std::abs(computed[i] - golden[i]);
      if (!(diff <= worst)) worst = std::isnan(diff) ? INFINITY : diff;
    }
    return worst;
  }

  std::pair<double, double> tolerance(const std::string& name) const {
    auto it = tolerances_.find(name);
    if (it != tolerances_.end()) return it->second;
    return {file_atol_, file_rtol_};
  }

  xlstm::io::SafetensorsFile file_;
  std::string kind_, dtype_;
  nlohmann::json config_;
  double file_atol_ = 0, file_rtol_ = 0;
  Tolerances tolerances_, tight_tolerances_;
  bool tight_pass_ = true;
  std::set<std::string> checked_;
};

}  // namespace golden
