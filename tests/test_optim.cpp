// The optimisers, the learning-rate schedules and gradient clipping (math
// §14): single steps against a transcription of torch 1.13's update in long
// double, the official weight-decay groups and schedule against the golden
// lm_train_steps files, clipping, tied storage, saving and resuming the
// moments, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.hpp"
#include "xlstm/cells/slstm_backward.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/safetensors_reader.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/train/adamw.hpp"
#include "xlstm/train/grad_clip.hpp"
#include "xlstm/train/lr_schedule.hpp"
#include "xlstm/train/sgd.hpp"
#include "xlstm/train/trainable_parameters.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_optim {

namespace {

using test_util::Scalars;
using test_util::TempPath;
using test_util::ThrowsMentioning;
using xlstm::Index;
using xlstm::Vector;

// A module with two tensors, "a.weight" (decayed by the official rule) and
// "a.bias", and optionally "head.weight" listed on a.weight's storage (a tie).
template <typename S>
struct TwoTensors {
  using Scalar = S;
  Vector<S> weight, bias;
  bool tied = false;
  TwoTensors(Index n, Index m, bool tie)
      : weight(Vector<S>::Zero(n)), bias(Vector<S>::Zero(m)), tied(tie) {}

  XLSTM_PARAMETER_VISITOR

  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    const xlstm::Shape w{std::size_t(self.weight.size())}, b{std::size_t(self.bias.size())};
    xlstm::visit_parameter(visit, prefix, "a.weight", w, self.weight);
    xlstm::visit_parameter(visit, prefix, "a.bias", b, self.bias);
    if (self.tied) xlstm::visit_parameter(visit, prefix, "head.weight", w, self.weight, true);
  }
};

template <typename S>
void fill(Vector<S>& v, std::mt19937& rng, double stddev) {
  std::normal_distribution<double> normal(0.0, stddev);
  for (Index i = 0; i < v.size(); ++i) v[i] = S(normal(rng));
}

// torch 1.13 AdamW (single tensor) for one element, in long double with the
// scalar factors rounded to S as torch rounds its Python floats to the tensor
// dtype; exact enough that the library's S arithmetic must land within a few
// ulps of it.
struct AdamWReference {
  long double p, m = 0, v = 0;
  long double step(long double g, int t, double lr, double wd, double b1, double b2, double eps) {
    p *= 1.0L - lr * wd;
    m = m * b1 + (1.0L - b1) * g;
    v = v * b2 + (1.0L - b2) * g * g;
    const long double bc1 = 1.0L - std::pow((long double)b1, t);
    const long double bc2 = 1.0L - std::pow((long double)b2, t);
    p -= (lr / bc1) * m / (std::sqrt(v) / std::sqrt(bc2) + eps);
    return p;
  }
};

template <typename S>
class OptimTyped : public ::testing::Test {};
TYPED_TEST_SUITE(OptimTyped, Scalars, ::testing::internal::DefaultNameGenerator);

TYPED_TEST(OptimTyped, AdamWStepsMatchTheTorchUpdate) {
  using S = TypeParam;
  std::mt19937 rng(41);
  TwoTensors<S> module(7, 3, false), grads(7, 3, false);
  fill(module.weight, rng, 1.0);
  fill(module.bias, rng, 1.0);
  xlstm::AdamWOptions options;
  options.learning_rate = 0.05;
  options.weight_decay = 0.1;
  xlstm::AdamW<S> adamw({module, grads, xlstm::official_weight_decay_rule()}, options);
  ASSERT_EQ(adamw.parameters().names(true), std::vector<std::string>{"a.weight"});
  ASSERT_EQ(adamw.parameters().names(false), std::vector<std::string>{"a.bias"});

  std::vector<AdamWReference> ref_w, ref_b;
  for (Index i = 0; i < 7; ++i) ref_w.push_back({(long double)module.weight[i]});
  for (Index i = 0; i < 3; ++i) ref_b.push_back({(long double)module.bias[i]});
  const double lrs[] = {0.05, 0.0, 0.02, 0.05};  // lr 0 as at the schedule's first step
  for (int t = 1; t <= 4; ++t) {
    fill(grads.weight, rng, t == 3 ? 1e-6 : 1.0);  // a tiny gradient: eps matters
    fill(grads.bias, rng, 1.0);
    adamw.set_learning_rate(lrs[t - 1]);
    adamw.step();
    EXPECT_EQ(adamw.step_count(), t);
    for (Index i = 0; i < 7; ++i) {
      const long double want =
          ref_w[std::size_t(i)].step(grads.weight[i], t, lrs[t - 1], 0.1, 0.9, 0.999, 1e-8);
      EXPECT_NEAR(double(module.weight[i]), double(want),
                  16 * std::numeric_limits<S>::epsilon() * (1 + std::abs(double(want))))
          << "weight " << i << " step " << t;
    }
    for (Index i = 0; i < 3; ++i) {
      const long double want =
          ref_b[std::size_t(i)].step(grads.bias[i], t, lrs[t - 1], 0.0, 0.9, 0.999, 1e-8);
      EXPECT_NEAR(double(module.bias[i]), double(want),
                  16 * std::numeric_limits<S>::epsilon() * (1 + std::abs(double(want))))
          << "bias " << i << " step " << t;
    }
  }
}

// By hand: the first step moves p by -lr * g / (|g| + eps) after the decay,
// i.e. by about lr against the gradient's sign.
TEST(Optim, AdamWFirstStepByHand) {
  TwoTensors<double> module(1, 1, false), grads(1, 1, false);
  module.weight[0] = 1.0;
  module.bias[0] = -2.0;
  grads.weight[0] = 0.5;
  grads.bias[0] = -4.0;
  xlstm::AdamWOptions options;
  options.learning_rate = 0.1;
  options.weight_decay = 0.01;
  xlstm::AdamW<double> adamw({module, grads, xlstm::official_weight_decay_rule()}, options);
  adamw.step();
  EXPECT_NEAR(module.weight[0], 0.999 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-15);
  EXPECT_NEAR(module.bias[0], -2.0 + 0.1 * 4.0 / (4.0 + 1e-8), 1e-15);  // not decayed
}

TEST(Optim, FrozenParametersDoNotMoveAndHaveNoMoments) {
  TwoTensors<double> module(2, 2, false), grads(2, 2, false);
  module.weight.setConstant(1.0);
  module.bias.setConstant(1.0);
  grads.weight.setConstant(1.0);
  grads.bias.setConstant(1.0);
  const auto frozen = [](const std::string& name) { return name == "a.bias"; };
  xlstm::AdamW<double> adamw({module, grads, xlstm::decay_all(), frozen}, {});
  adamw.step();
  EXPECT_EQ(module.bias, Vector<double>::Constant(2, 1.0));
  EXPECT_LT(module.weight[0], 1.0);
  const auto names = xlstm::parameter_list(adamw);
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(names[0].name, "exp_avg.a.weight");
  EXPECT_EQ(names[1].name, "exp_avg_sq.a.weight");
}

// A tied head shares storage with the embedding: it is updated once, under
// the first name, and clipping counts it once.
TEST(Optim, TiedStorageIsUpdatedAndClippedOnce) {
  TwoTensors<double> module(3, 1, true), grads(3, 1, true);
  module.weight.setConstant(1.0);
  grads.weight.setConstant(2.0);
  grads.bias.setConstant(0.0);
  xlstm::SgdOptions options;
  options.learning_rate = 0.25;
  xlstm::Sgd<double> sgd({module, grads, xlstm::decay_all()}, options);
  ASSERT_EQ(sgd.parameters().size(), 2u);
  sgd.step();
  EXPECT_EQ(module.weight, Vector<double>::Constant(3, 0.5));  // once: 1 - 0.25 * 2

  const double norm = xlstm::clip_grad_norm(grads, 1.0);
  EXPECT_DOUBLE_EQ(norm, std::sqrt(3 * 4.0));
  EXPECT_NEAR(grads.weight.norm(), 1.0, 1e-6);
}

TYPED_TEST(OptimTyped, ClippingScalesAboveTheLimitOnly) {
  using S = TypeParam;
  std::mt19937 rng(5);
  TwoTensors<S> grads(5, 4, false);
  fill(grads.weight, rng, 1.0);
  fill(grads.bias, rng, 1.0);
  const double total = std::sqrt(double(grads.weight.squaredNorm() + grads.bias.squaredNorm()));
  const auto before_w = grads.weight;
  EXPECT_NEAR(xlstm::clip_grad_norm(grads, 10 * total), total, 1e-6 * total);
  EXPECT_EQ(grads.weight, before_w);  // coefficient clamped to 1
  EXPECT_NEAR(xlstm::clip_grad_norm(grads, 0.5 * total), total, 1e-6 * total);
  const double after = std::sqrt(double(grads.weight.squaredNorm() + grads.bias.squaredNorm()));
  EXPECT_NEAR(after, 0.5 * total, 1e-5 * total);

  grads.bias[0] = std::numeric_limits<S>::infinity();
  const auto w = grads.weight;
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::clip_grad_norm(grads, 1.0, true); }, {"finite"}));
  EXPECT_EQ(grads.weight, w);
  EXPECT_TRUE(std::isinf(xlstm::clip_grad_norm(grads, 1.0)));
  EXPECT_TRUE(ThrowsMentioning([&] { xlstm::clip_grad_norm(grads, 0.0); }, {"max_norm", "0"}));
}

TEST(Optim, SgdMomentumDampeningNesterovAndDecay) {
  for (const bool nesterov : {false, true}) {
    TwoTensors<double> module(1, 1, false), grads(1, 1, false);
    module.weight[0] = 1.0;
    module.bias[0] = 1.0;
    xlstm::SgdOptions options;
    options.learning_rate = 0.1;
    options.momentum = 0.9;
    options.weight_decay = 0.5;
    options.nesterov = nesterov;
    xlstm::Sgd<double> sgd({module, grads, xlstm::official_weight_decay_rule()}, options);
    double p = 1.0, buf = 0.0, q = 1.0, qbuf = 0.0;
    for (int t = 0; t < 3; ++t) {
      const double g = 0.3 * (t + 1);
      grads.weight[0] = g;
      grads.bias[0] = g;
      sgd.step();
      const double d = g + 0.5 * p;  // decayed
      buf = t == 0 ? d : 0.9 * buf + d;
      p -= 0.1 * (nesterov ? d + 0.9 * buf : buf);
      qbuf = t == 0 ? g : 0.9 * qbuf + g;  // bias: no decay
      q -= 0.1 * (nesterov ? g + 0.9 * qbuf : qbuf);
      EXPECT_NEAR(module.weight[0], p, 1e-15) << "step " << t;
      EXPECT_NEAR(module.bias[0], q, 1e-15) << "step " << t;
    }
  }
}

// Saving the moments and the step count after 3 steps and resuming in a new
// optimiser gives the same bits as 6 uninterrupted steps.
TEST(Optim, AdamWResumesBitIdentically) {
  xlstm::SLstmCell<float> cell_a(test_util::slstm_cell_config(8, 2));
  std::mt19937_64 noise(3);
  test_util::add_noise(cell_a, noise, 0.5);
  auto cell_b = cell_a;
  xlstm::SLstmCellGradients<float> grads_a(cell_a), grads_b(cell_b);
  xlstm::AdamWOptions options;
  options.learning_rate = 0.01;
  auto rule = xlstm::decay_all();
  xlstm::AdamW<float> straight({cell_a, grads_a, rule}, options);
  std::mt19937 rng(9);
  std::vector<std::pair<xlstm::Matrix<float>, Vector<float>>> gradients;
  for (int t = 0; t < 6; ++t) {
    gradients.emplace_back(test_util::random_matrix<float>(grads_a.recurrent_kernel().rows(),
                                                           grads_a.recurrent_kernel().cols(), rng),
                           test_util::random_matrix<float>(grads_a.bias().size(), 1, rng));
  }
  auto apply = [&](xlstm::SLstmCellGradients<float>& g, int t) {
    g.recurrent_kernel() = gradients[std::size_t(t)].first;
    g.bias() = gradients[std::size_t(t)].second;
  };
  for (int t = 0; t < 6; ++t) {
    apply(grads_a, t);
    straight.step();
  }

  TempPath path("adamw_moments");
  {
    xlstm::AdamW<float> first({cell_b, grads_b, rule}, options);
    for (int t = 0; t < 3; ++t) {
      apply(grads_b, t);
      first.step();
    }
    xlstm::io::save_module(first, path.str());
  }
  xlstm::AdamW<float> resumed({cell_b, grads_b, rule}, options);
  xlstm::io::load_module(resumed, xlstm::io::SafetensorsFile::open(path.str()));
  resumed.set_step_count(3);
  for (int t = 3; t < 6; ++t) {
    apply(grads_b, t);
    resumed.step();
  }
  EXPECT_TRUE(test_util::BitIdentical(cell_a.recurrent_kernel(), cell_b.recurrent_kernel()));
  EXPECT_TRUE(test_util::BitIdentical(cell_a.bias(), cell_b.bias()));
}

// The golden lm_train_steps files list the official AdamW groups of a mixed
// language model and its schedule's learning rate per step.
std::string golden_file(const std::string& name) {
  return std::string(XLSTM_TEST_DATA_DIR) + "/golden/" + name;
}

TEST(Optim, OfficialWeightDecayGroupsMatchTheGoldenFiles) {
  for (const char* name : {"lm_train_steps_v20_d16_nb2_t12.f32.safetensors",
                           "lm_train_steps_sched_v20_d16_nb2_t12.f64.safetensors"}) {
    SCOPED_TRACE(name);
    const auto file = xlstm::io::SafetensorsFile::open(golden_file(name));
    const auto& meta = file.metadata();
    const auto decayed = nlohmann::json::parse(meta.at("weight_decay_params"));
    const auto other = nlohmann::json::parse(meta.at("no_weight_decay_params"));
    const auto config =
        xlstm::io::language_model_config_from_json(nlohmann::json::parse(meta.at("config")));
    ASSERT_FALSE(config.weight_decay_on_embedding);
    xlstm::LanguageModel<float> model(config);
    std::set<std::string> listed;
    for (const auto& p : xlstm::parameter_list(model)) {
      if (!p.optional) listed.insert(p.name);
    }
    const auto rule = xlstm::official_weight_decay_rule(config.weight_decay_on_embedding);
    std::set<std::string> golden;
    for (const auto& entry : decayed) {
      const std::string n = entry.get<std::string>();
      EXPECT_TRUE(rule(n)) << n;
      golden.insert(n);
    }
    for (const auto& entry : other) {
      const std::string n = entry.get<std::string>();
      EXPECT_FALSE(rule(n)) << n;
      golden.insert(n);
    }
    EXPECT_EQ(listed, golden);  // every parameter is in exactly one group
  }
}

TEST(Optim, WarmupCosineMatchesTheGoldenSchedule) {
  const auto file = xlstm::io::SafetensorsFile::open(
      golden_file("lm_train_steps_sched_v20_d16_nb2_t12.f64.safetensors"));
  const auto opt = nlohmann::json::parse(file.metadata().at("optimizer"));
  const auto& s = opt.at("lr_schedule");
  xlstm::LinearWarmupCosine schedule{s.at("warmup_steps").get<std::int64_t>(),
                                     s.at("decay_until_step").get<std::int64_t>(),
                                     s.at("max_lr").get<double>(), s.at("min_lr").get<double>()};
  schedule.validate();
  const auto lr = file.read<double>("output.lr");
  ASSERT_EQ(lr.size(), std::size_t(std::stoi(file.metadata().at("steps"))));
  for (std::size_t k = 0; k < lr.size(); ++k) {
    EXPECT_DOUBLE_EQ(schedule(std::int64_t(k)), lr[k]) << "optimiser step " << k + 1;
  }
  EXPECT_EQ(lr[0], 0.0);  // the first step runs at lr 0
}

TEST(Optim, WarmupCosineShape) {
  const xlstm::LinearWarmupCosine s{10, 110, 1e-3, 1e-6};
  EXPECT_EQ(s(0), 0.0);
  EXPECT_DOUBLE_EQ(s(5), 0.5e-3);
  EXPECT_DOUBLE_EQ(s(10), 1e-3);                        // warm-up end: the peak
  EXPECT_DOUBLE_EQ(s(60), 1e-6 + 0.5 * (1e-3 - 1e-6));  // half-way down the cosine
  EXPECT_DOUBLE_EQ(s(110), 1e-6);
  EXPECT_DOUBLE_EQ(s(100000), 1e-6);
  EXPECT_EQ(xlstm::ConstantLr{0.3}(12345), 0.3);
  EXPECT_TRUE(ThrowsMentioning(
      [] {
        xlstm::LinearWarmupCosine{10, 5, 1e-3, 0}.validate();
      },
      {"decay_until_step", "5"}));
}

TEST(Optim, BadArgumentsThrowNamingThem) {
  TwoTensors<float> module(2, 2, false), wrong(3, 2, false), grads(2, 2, false);
  EXPECT_TRUE(ThrowsMentioning(
      [&] { xlstm::TrainableParameters<float>(module, wrong, xlstm::decay_all()); },
      {"a.weight", "[2]", "[3]"}));
  TwoTensors<float> tied(2, 2, true);
  EXPECT_TRUE(
      ThrowsMentioning([&] { xlstm::TrainableParameters<float>(tied, grads, xlstm::decay_all()); },
                       {"gradients", "3", "2"}));
  xlstm::AdamWOptions bad;
  bad.beta2 = 1.0;
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        xlstm::AdamW<float>({module, grads, xlstm::decay_all()}, bad);
      },
      {"beta2", "1"}));
  xlstm::AdamW<float> adamw({module, grads, xlstm::decay_all()}, {});
  EXPECT_TRUE(ThrowsMentioning([&] { adamw.set_learning_rate(-1); }, {"learning_rate", "-1"}));
  xlstm::SgdOptions nesterov;
  nesterov.nesterov = true;
  EXPECT_TRUE(ThrowsMentioning(
      [&] {
        xlstm::Sgd<float>({module, grads, xlstm::decay_all()}, nesterov);
      },
      {"nesterov", "momentum"}));
}

}  // namespace

}  // namespace xlstm_test_optim
