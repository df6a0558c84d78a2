// Training checkpoints (train/training_checkpoint.hpp): a run stopped after
// 5 steps, saved, loaded into freshly built objects and continued for 5
// steps ends exactly where 10 uninterrupted steps end (parameters and AdamW
// moments bit for bit, math §14.2, §14.4; the data from the same batch on,
// math §15.5).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <variant>
#include <vector>

#include "test_util.hpp"
#include "xlstm/model/language_model_backward.hpp"
#include "xlstm/train/adamw.hpp"
#include "xlstm/train/formal_language_batch.hpp"
#include "xlstm/train/formal_language_dataset.hpp"
#include "xlstm/train/grad_clip.hpp"
#include "xlstm/train/lr_schedule.hpp"
#include "xlstm/train/training_checkpoint.hpp"

// Everything of this file is in its own namespace: the test programs are unity builds
// (tests/CMakeLists.txt), where several test files share one translation unit.
namespace xlstm_test_training_checkpoint {

namespace {

using xlstm::Index;

// Everything a run owns, built the same way every time except the model's
// initial draw (so a resumed run must get its weights from the file).
struct TrainingRun {
  explicit TrainingRun(std::uint64_t init_seed)
      : data(xlstm::FormalLanguageDatasetConfig::official_parity()),
        model(config()),
        grads(model),
        adamw({model, grads, xlstm::official_weight_decay_rule()}, options()),
        batches(data.train(), /*batch_size=*/4, xlstm::BatchOrder::sequential, 0,
                xlstm::BatchWidth::longest) {
    xlstm::Rng rng(init_seed);
    model.initialize(rng);
  }

  static xlstm::LanguageModelConfig config() {
    // sLSTM only (every block index listed): 2 blocks, E = 16, vocab 3.
    auto c = test_util::lm_config(/*embedding_dim=*/16, /*num_blocks=*/2, /*slstm_at=*/{0, 1},
                                  /*vocab_size=*/3, /*context_length=*/256, /*num_heads=*/2);
    return c;
  }
  static xlstm::AdamWOptions options() {
    xlstm::AdamWOptions o;
    o.learning_rate = 1e-2;
    o.weight_decay = 0.1;
    return o;
  }

  void steps(int count) {
    const xlstm::LinearWarmupCosine schedule{/*warmup*/ 2, /*decay until*/ 10, 1e-2, 1e-5};
    for (int i = 0; i < count; ++i) {
      batches.next(batch);
      grads.zero();
      xlstm::loss_and_backward(model, batch.inputs, batch.targets, batch.lengths, grads, work);
      xlstm::clip_grad_norm(grads, /*max_norm=*/0.5);
      adamw.set_learning_rate(schedule(schedule_steps));
      adamw.step();
      ++schedule_steps;
    }
  }

  xlstm::TrainingPosition position() const {
    xlstm::TrainingPosition p;
    p.step_count = adamw.step_count();
    p.schedule_steps = schedule_steps;
    p.batches_drawn = batches.batches_drawn();
    p.learning_rate = adamw.learning_rate();
    p.extra["run"] = "parity test";
    return p;
  }

  xlstm::FormalLanguageDataset data;
  xlstm::LanguageModel<float> model;
  xlstm::LanguageModelGradients<float> grads;
  xlstm::AdamW<float> adamw;
  xlstm::FormalLanguageBatches batches;
  xlstm::FormalLanguageBatch batch;
  xlstm::LanguageModelLossWorkspace<float> work;
  std::int64_t schedule_steps = 0;
};

// Every value of every tensor of `a` and `b` (modules or optimisers), bitwise.
template <typename Module>
void expect_bitwise_equal(const Module& a, const Module& b) {
  const auto pa = xlstm::parameter_list(a), pb = xlstm::parameter_list(b);
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    ASSERT_EQ(pa[i].name, pb[i].name);
    ASSERT_EQ(pa[i].size(), pb[i].size());
    EXPECT_EQ(std::memcmp(pa[i].data, pb[i].data, pa[i].size() * sizeof(float)), 0)
        << "tensor '" << pa[i].name << "' differs";
  }
}

TEST(TrainingCheckpoint, FiveStepsSaveLoadFiveStepsEqualsTenSteps) {
  TrainingRun straight(/*init_seed=*/1);
  straight.steps(10);

  test_util::TempPath path("run");
  {
    TrainingRun first(/*init_seed=*/1);
    first.steps(5);
    xlstm::save_training_checkpoint(path.str(), first.model, first.adamw, first.position());
  }
  TrainingRun resumed(/*init_seed=*/2);  // other weights, zero moments, data at batch 0
  const auto position = xlstm::load_training_checkpoint(path.str(), resumed.model, resumed.adamw);
  EXPECT_EQ(position.step_count, 5);
  EXPECT_EQ(position.batches_drawn, 5);
  EXPECT_EQ(position.extra.at("run"), "parity test");
  EXPECT_EQ(resumed.adamw.step_count(), 5);
  resumed.schedule_steps = position.schedule_steps;
  resumed.batches.skip(position.batches_drawn);
  resumed.steps(5);

  expect_bitwise_equal(straight.model, resumed.model);
  expect_bitwise_equal(straight.adamw, resumed.adamw);
  EXPECT_EQ(straight.adamw.step_count(), resumed.adamw.step_count());
  EXPECT_EQ(straight.batches.batches_drawn(), resumed.batches.batches_drawn());
}

// design §7.9: whether the sLSTM cells of a model hold a packed copy of R.
std::vector<bool> prepared_cells(const xlstm::LanguageModel<float>& model) {
  std::vector<bool> prepared;
  for (const auto& block : model.stack().blocks()) {
    if (const auto* s = std::get_if<xlstm::SLstmBlock<float>>(&block)) {
      prepared.push_back(s->cell().is_prepared());
    }
  }
  return prepared;
}

// A model built or redrawn is prepared; one whose parameters an optimiser
// was bound to stays unprepared through initialize(rng) and the steps (its
// copy of R would miss the optimiser's writes), until prepare_kernels().
TEST(TrainingCheckpoint, AModelUnderAnOptimiserIsNotPreparedBehindItsBack) {
  const std::vector<bool> all(2, true), none(2, false);
  xlstm::LanguageModel<float> fresh(TrainingRun::config());
  EXPECT_EQ(prepared_cells(fresh), all);
  xlstm::Rng rng(5);
  fresh.initialize(rng);
  EXPECT_EQ(prepared_cells(fresh), all);
  TrainingRun run(/*init_seed=*/1);  // the optimiser is bound before initialize()
  EXPECT_EQ(prepared_cells(run.model), none);
  run.steps(2);
  EXPECT_EQ(prepared_cells(run.model), none);
  run.model.prepare_kernels();
  EXPECT_EQ(prepared_cells(run.model), all);
}

TEST(TrainingCheckpoint, SkippingBatchesEqualsDrawingThem) {
  // 10 samples in batches of 3: a pass is 4 batches (the last of 1), so 7
  // batches cross into the second pass (a new permutation when shuffled).
  const auto task = xlstm::FormalLanguageDatasetConfig::official_parity().task;
  const xlstm::FormalLanguageSplit split("train", task, /*count=*/10, /*split_seed=*/3,
                                         /*shift=*/1, /*enable_mask=*/true);
  for (const auto order : {xlstm::BatchOrder::sequential, xlstm::BatchOrder::shuffled}) {
    xlstm::FormalLanguageBatches drawn(split, 3, order, /*shuffle_seed=*/5);
    xlstm::FormalLanguageBatches skipped(split, 3, order, /*shuffle_seed=*/5);
    for (int i = 0; i < 7; ++i) drawn.next();
    skipped.skip(7);
    EXPECT_EQ(skipped.batches_drawn(), 7);
    EXPECT_EQ(skipped.pass(), drawn.pass());
    for (int i = 0; i < 3; ++i) EXPECT_EQ(drawn.next().indices, skipped.next().indices);
  }
}

TEST(TrainingCheckpoint, RejectsMismatchesAndChangesNothing) {
  TrainingRun run(/*init_seed=*/1);
  run.steps(2);
  test_util::TempPath path("run");
  xlstm::save_training_checkpoint(path.str(), run.model, run.adamw, run.position());

  // A wider model: every tensor misshapen; the load must leave it untouched.
  auto config = TrainingRun::config();
  config.embedding_dim = 8;
  xlstm::LanguageModel<float> other(config);
  xlstm::LanguageModelGradients<float> grads(other);
  xlstm::AdamW<float> adamw({other, grads, xlstm::official_weight_decay_rule()},
                            TrainingRun::options());
  const auto before = other.embedding();
  EXPECT_THROW(xlstm::load_training_checkpoint(path.str(), other, adamw), xlstm::Error);
  EXPECT_EQ(other.embedding(), before);
  EXPECT_EQ(adamw.step_count(), 0);

  // A plain module file is not a training checkpoint.
  test_util::TempPath plain("plain");
  xlstm::io::save_module(run.model, plain.str());
  EXPECT_THROW(xlstm::load_training_checkpoint(plain.str(), run.model, run.adamw), xlstm::Error);

  xlstm::TrainingPosition reserved;
  reserved.extra["xlstm.step_count"] = "3";
  EXPECT_THROW(xlstm::save_training_checkpoint(path.str(), run.model, run.adamw, reserved),
               xlstm::Error);
}

}  // namespace

}  // namespace xlstm_test_training_checkpoint
