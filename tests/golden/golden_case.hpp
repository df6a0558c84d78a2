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
    if (meta.count("tolerances")) {
      const auto tolerances = nlohmann::json::parse(meta.at("tolerances"));
      for (auto it = tolerances.begin(); it != tolerances.end(); ++it) {
        tolerances_[it.key()] = {it.value().at(0).get<double>(), it.value().at(1).get<double>()};
      }
    }
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
  /// tolerances (golden README §3). `tolerance_of` names a tensor of this or the
  /// paired file whose tolerances to use (defaults to `name`).
  void compare(const std::string& name, const std::vector<double>& computed) {
    checked_.insert(name);
    const auto golden = values<double>(name);
    ASSERT_EQ(computed.size(), golden.size()) << name << ": element count";
    const auto [atol, rtol] = tolerance(name);
    double worst = 0;
    std::size_t worst_at = 0;
    for (std::size_t i = 0; i < golden.size(); ++i) {
      const double ratio = std::abs(computed[i] - golden[i]) / (atol + rtol * std::abs(golden[i]));
      if (!(ratio <= worst)) {  // also catches NaN
        worst = std::isnan(ratio) ? INFINITY : ratio;
        worst_at = i;
      }
    }
    std::printf("    %-44s worst |b-g|/(atol+rtol|g|) = %.3g  (atol %.3g, rtol %.3g)\n",
                name.c_str(), worst, atol, rtol);
    EXPECT_LE(worst, 1.0) << name << ": element " << worst_at << " computed " << computed[worst_at]
                          << ", golden " << golden[worst_at];
  }

  template <typename Scalar>
  void compare(const std::string& name, const Sequence<Scalar>& computed) {
    compare(name, to_double(computed.matrix()));
  }

  /// Compares a head-major (B, T, NH*DH) Sequence with a (B, NH, T, DH) tensor.
  template <typename Scalar>
  void compare_heads(const std::string& name, const Sequence<Scalar>& computed) {
    const auto s = shape(name);
    ASSERT_EQ(s.size(), 4u) << name;
    const Index b = Index(s[0]), nh = Index(s[1]), t = Index(s[2]), dh = Index(s[3]);
    std::vector<double> out(std::size_t(b * nh * t * dh));
    for (Index bi = 0; bi < b; ++bi)
      for (Index h = 0; h < nh; ++h)
        for (Index ti = 0; ti < t; ++ti)
          for (Index j = 0; j < dh; ++j)
            out[std::size_t(((bi * nh + h) * t + ti) * dh + j)] =
                double(computed(bi, ti, h * dh + j));
    compare(name, out);
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
  std::pair<double, double> tolerance(const std::string& name) const {
    auto it = tolerances_.find(name);
    if (it != tolerances_.end()) return it->second;
    return {file_atol_, file_rtol_};
  }

  xlstm::io::SafetensorsFile file_;
  std::string kind_, dtype_;
  nlohmann::json config_;
  double file_atol_ = 0, file_rtol_ = 0;
  std::map<std::string, std::pair<double, double>> tolerances_;
  std::set<std::string> checked_;
};

}  // namespace golden
