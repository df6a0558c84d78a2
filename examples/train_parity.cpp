// Trains an xLSTM language model on the paper's parity task with the official
// recipe (NX-AI/xlstm experiments/parity_xlstm*.yaml + main.py; math §14,
// §15): AdamW with the official weight-decay groups, linear warm-up + cosine
// to lr·0.001, batch 256, 20,000 steps, train lengths 3–40, and evaluates on
// the official validation split (lengths 40–256) in the buckets 40–64,
// 65–128, 129–256 (accuracy and scaled accuracy (acc − 0.5)/0.5), and on
// sequences of the training lengths (in-distribution).
//
//   train_parity [--slstm-at 0,1 | all | none] [--mlstm-only] [--steps N] ...
//   train_parity --help
//
// Prints a progress line (rewritten in place on a terminal), an evaluation
// line every --eval-every steps, and writes every step and evaluation to
// --log FILE.json. --save FILE keeps a training checkpoint (parameters, AdamW
// moments, step, data position) that --resume FILE continues bit for bit.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train_common.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/train/formal_language_batch.hpp"
#include "xlstm/train/formal_language_dataset.hpp"
#include "xlstm/train/sequence_accuracy.hpp"
#include "xlstm/train/training_checkpoint.hpp"

namespace {

using namespace train_example;  // NOLINT: the examples' shared helpers (train_common.hpp)
using xlstm::Index;

const char* kUsage =
    "usage: train_parity [options]\n"
    "Trains an xLSTM language model on the parity task (xLSTM paper App. B.1.1) with the\n"
    "official recipe and evaluates it on lengths 40-256. Defaults: the official\n"
    "experiments/parity_xlstm01.yaml (sLSTM at blocks 0 and 1).\n"
    "\n"
    "model:\n"
    "  --slstm-at LIST        sLSTM block indices, e.g. 0,1 or 1; 'all'; 'none' (default 0,1)\n"
    "  --mlstm-only           the same as --slstm-at none (xLSTM[1:0])\n"
    "  --embedding-dim N      (64)\n"
    "  --num-blocks N         (2)\n"
    "  --num-heads N          heads of the mLSTM and sLSTM cells (1)\n"
    "  --seed N               initialisation seed (0)\n"
    "recipe:\n"
    "  --steps N              optimiser steps (20000)\n"
    "  --batch-size N         (256)\n"
    "  --lr X                 peak learning rate (1e-3)\n"
    "  --warmup-steps N       linear warm-up from 0 (2000)\n"
    "  --lr-decay-factor X    cosine from lr down to lr*X at the last step (0.001)\n"
    "  --weight-decay X       AdamW, decayed group only (0.1)\n"
    "  --max-grad-norm X      global-norm clipping; 0 = off, the official recipe (0)\n"
    "data:\n"
    "  --train-min-length N   (3)\n"
    "  --train-max-length N   (40)\n"
    "  --data-seed N          dataset seed (1, the official)\n"
    "evaluation:\n"
    "  --eval-every N         steps between evaluations; 0 = only at the end (1000)\n"
    "  --eval-samples N       first N of the 8192 validation samples (8192)\n"
    "  --eval-batch-size N    (256)\n"
    "  --in-dist-samples N    also evaluate N sequences of the training lengths (a split of\n"
    "                         its own, seeded like the official ones); 0 = off (512)\n"
    "output:\n"
    "  --log FILE.json        every step (loss, lr, grad norm, tokens/s) and evaluation\n"
    "  --print-every N        plain progress lines every N steps when not a terminal (100)\n"
    "  --save FILE            training checkpoint at every evaluation and at the end\n"
    "  --resume FILE          continue a run saved with --save (same options)\n"
    "  --stop-at-step N       end after step N (the schedule still runs to --steps); with\n"
    "                         --save a checkpoint there that --resume continues\n"
    "  --threads N            0 = all hardware threads (0)\n"
    "  --expect-final-loss-below X\n"
    "                         exit 1 unless the mean training loss of the last 10%\n"
    "                         of steps (at most 50) is below X (for tests)\n"
    "  --expect NAME>=X, --expect NAME<=X\n"
    "                         exit 1 unless the final evaluation's accuracy NAME (in-dist,\n"
    "                         40-256, 40-64, 65-128, 129-256) is >= / <= X; repeatable\n"
    "\n"
    "Exit codes: 0 done, 1 error or failed expectation, 2 bad command line.\n";

// --expect NAME>=X or NAME<=X: a bound on one accuracy of the final
// evaluation (for tests: the CI-sized parity runs).
struct AccuracyExpectation {
  std::string name;  // in-dist, 40-256 or a bucket "min-max"
  bool at_least = true;
  double bound = 0;
};

AccuracyExpectation parse_expectation(const std::string& text) {
  const char* names[] = {"in-dist", "40-256", "40-64", "65-128", "129-256"};
  const auto op = text.find_first_of("<>");
  AccuracyExpectation e;
  bool ok = op != std::string::npos && op + 1 < text.size() && text[op + 1] == '=';
  if (ok) {
    e.name = text.substr(0, op);
    e.at_least = text[op] == '>';
    ok = false;
    for (const char* name : names) ok = ok || e.name == name;
    char* end = nullptr;
    const std::string number = text.substr(op + 2);
    e.bound = std::strtod(number.c_str(), &end);
    ok = ok && !number.empty() && *end == '\0' && e.bound >= 0 && e.bound <= 1;
  }
  if (!ok) {
    throw UsageError(
        "--expect must be NAME>=X or NAME<=X with NAME one of in-dist, 40-256, "
        "40-64, 65-128, 129-256 and X in [0, 1], got '" +
        text + "'");
  }
  return e;
}

struct Options : train_example::CommonOptions {
  std::int64_t train_min_length = 3, train_max_length = 40, data_seed = 1;
  std::int64_t eval_samples = 8192, eval_batch_size = 256;
  std::string save, resume;
  std::int64_t stop_at_step = 0;  // 0: run to --steps
  std::int64_t in_dist_samples = 512;
  double expect_final_loss_below = std::nan("");
  std::vector<AccuracyExpectation> expectations;

  Options() { model.slstm_at = {0, 1}; }  // parity_xlstm01.yaml; the rest are the defaults
};

Options parse(int argc, char** argv, bool& help) {
  Options o;
  train_example::parse_arguments(argc, argv, o, help, [&](auto& args, const std::string& arg) {
    if (arg == "--train-min-length") {
      o.train_min_length = args.integer(2, 256);
    } else if (arg == "--train-max-length") {
      o.train_max_length = args.integer(2, 256);
    } else if (arg == "--data-seed") {
      o.data_seed = args.integer(0);
    } else if (arg == "--eval-samples") {
      o.eval_samples = args.integer(0, 8192);
    } else if (arg == "--eval-batch-size") {
      o.eval_batch_size = args.integer(1, 1 << 20);
    } else if (arg == "--save") {
      o.save = args.value();
    } else if (arg == "--resume") {
      o.resume = args.value();
    } else if (arg == "--stop-at-step") {
      o.stop_at_step = args.integer(1);
    } else if (arg == "--in-dist-samples") {
      o.in_dist_samples = args.integer(0, 8192);
    } else if (arg == "--expect-final-loss-below") {
      o.expect_final_loss_below = args.number(0, /*exclusive=*/true);
    } else if (arg == "--expect") {
      o.expectations.push_back(parse_expectation(args.value()));
    } else {
      return false;
    }
    return true;
  });
  if (o.stop_at_step > o.recipe.steps) {
    throw UsageError("--stop-at-step (" + std::to_string(o.stop_at_step) +
                     ") must be <= --steps (" + std::to_string(o.recipe.steps) + ")");
  }
  if (o.train_min_length > o.train_max_length) {
    throw UsageError("--train-min-length (" + std::to_string(o.train_min_length) +
                     ") must be <= --train-max-length (" + std::to_string(o.train_max_length) +
                     ")");
  }
  return o;
}

// One evaluation over the cached validation batches: accuracy per bucket,
// and on the in-distribution batches (training lengths) if there are any.
struct Evaluation {
  Json json;
  std::string line;
  std::vector<std::pair<std::string, double>> accuracies;  // by --expect name
};

Evaluation evaluate(const xlstm::LanguageModel<float>& model,
                    const std::vector<xlstm::FormalLanguageBatch>& batches,
                    const std::vector<xlstm::FormalLanguageBatch>& in_dist_batches,
                    std::int64_t step) {
  const auto start = Clock::now();
  // One batch per thread: the forward is const and each batch has its own state.
  const std::size_t count = batches.size() + in_dist_batches.size();
  auto batch_at = [&](std::size_t i) -> const xlstm::FormalLanguageBatch& {
    return i < batches.size() ? batches[i] : in_dist_batches[i - batches.size()];
  };
  std::vector<xlstm::Sequence<float>> logits(count);
  xlstm::parallel_for(Index(count), /*parallel=*/true, [&](Index i) {
    const auto& batch = batch_at(std::size_t(i));
    auto state = model.initial_state(batch.batch());
    model.forward(batch.inputs, batch.lengths, state, logits[std::size_t(i)]);
  });
  xlstm::BucketedSequenceAccuracy accuracy(xlstm::parity_evaluation_buckets());
  xlstm::SequenceAccuracy in_dist;
  for (std::size_t i = 0; i < count; ++i) {
    const auto& batch = batch_at(i);
    if (i < batches.size()) {
      accuracy.update(logits[i], batch.targets, batch.sequence_lengths);
    } else {
      in_dist.update(logits[i], batch.targets);
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Evaluation e;
  e.json["step"] = step;
  e.line = "eval @ step " + std::to_string(step) + ":";
  if (!in_dist_batches.empty()) {
    e.json["in_distribution"] = {{"accuracy", in_dist.value()}, {"sequences", in_dist.counted()}};
    e.accuracies.emplace_back("in-dist", in_dist.value());
    e.line += format(" in-dist acc %.4f |", in_dist.value());
  }
  if (!batches.empty()) {
    const double overall = accuracy.overall().value();
    e.json["accuracy"] = overall;
    e.json["scaled_accuracy"] = xlstm::scaled_accuracy(overall, 0.5);
    e.json["sequences"] = accuracy.overall().counted();
    e.accuracies.emplace_back("40-256", overall);
    e.line += " 40-256 acc " + format("%.4f", overall) + " (scaled " +
              format("%+.3f", xlstm::scaled_accuracy(overall, 0.5)) + ")";
    for (std::size_t i = 0; i < accuracy.buckets().size(); ++i) {
      const auto& b = accuracy.buckets()[i];
      const double acc = accuracy.bucket(i).value();
      Json bucket;
      bucket["min_length"] = b.min_length;
      bucket["max_length"] = b.max_length;
      bucket["accuracy"] = acc;
      bucket["scaled_accuracy"] = xlstm::scaled_accuracy(acc, 0.5);
      bucket["sequences"] = accuracy.bucket(i).counted();
      e.json["buckets"].push_back(bucket);
      const std::string name =
          std::to_string((long long)b.min_length) + "-" + std::to_string((long long)b.max_length);
      e.accuracies.emplace_back(name, acc);
      e.line += format(" | %s %.4f (%+.3f)", name.c_str(), acc, xlstm::scaled_accuracy(acc, 0.5));
    }
  }
  e.json["seconds"] = seconds;
  e.line += format(" [%lld + %lld seqs, %.1f s]", (long long)accuracy.overall().counted(),
                   (long long)in_dist.counted(), seconds);
  return e;
}

// Exit code 1 (with a message) if an --expect bound does not hold for the
// final evaluation `e`, or if it has no such accuracy.
int check_expectations(const std::vector<AccuracyExpectation>& expectations, const Evaluation* e) {
  int failed = 0;
  for (const auto& x : expectations) {
    const double* value = nullptr;
    if (e) {
      for (const auto& a : e->accuracies) {
        if (a.first == x.name) value = &a.second;
      }
    }
    if (!value) {
      std::fprintf(stderr, "expectation failed: no %s accuracy was evaluated\n", x.name.c_str());
      failed = 1;
    } else if (x.at_least ? !(*value >= x.bound) : !(*value <= x.bound)) {
      std::fprintf(stderr, "expectation failed: %s accuracy %.4f is not %s %g\n", x.name.c_str(),
                   *value, x.at_least ? ">=" : "<=", x.bound);
      failed = 1;
    }
  }
  return failed;
}

// The validation samples (lengths 40-256), generated once: the first
// `count` in batches of `batch_size`, each trimmed to its longest row.
std::vector<xlstm::FormalLanguageBatch> validation_batches(const xlstm::FormalLanguageSplit& split,
                                                           std::int64_t count,
                                                           std::int64_t batch_size) {
  std::vector<xlstm::FormalLanguageBatch> out;
  for (std::int64_t begin = 0; begin < count; begin += batch_size) {
    std::vector<std::int64_t> indices;
    for (std::int64_t i = begin; i < std::min(count, begin + batch_size); ++i) {
      indices.push_back(i);
    }
    out.push_back(xlstm::make_formal_language_batch(split, indices, xlstm::BatchWidth::longest));
  }
  return out;
}

int run(const Options& o) {
  xlstm::set_num_threads(int(o.threads));
  const auto config = o.model.config(/*vocab_size=*/3, /*context_length=*/256);
  train_example::Trainer trainer(config, o.model, o.recipe);
  auto& model = trainer.model();
  auto& adamw = trainer.adamw();
  const auto& recipe = o.recipe;

  auto data_config = xlstm::FormalLanguageDatasetConfig::official_parity();
  data_config.seed = o.data_seed;
  data_config.task.min_sequence_length = o.train_min_length;
  data_config.task.max_sequence_length = o.train_max_length;
  // The in-distribution evaluation: a validation part of the training
  // lengths, after the official ones, so their seeds stay the official
  // (math §15.4: seeds are drawn per split in config order).
  data_config.subparts.push_back(
      {"validation_in_distribution", o.train_min_length, o.train_max_length});
  const xlstm::FormalLanguageDataset data(data_config);
  // The official order (DataLoader without shuffle), each batch trimmed to
  // its longest row (exact for a causal model, math §15.5).
  xlstm::FormalLanguageBatches batches(data.train(), Index(recipe.batch_size),
                                       xlstm::BatchOrder::sequential, 0,
                                       xlstm::BatchWidth::longest);

  Json run_json;
  run_json["options"] = o.common_json();
  run_json["options"].update(Json{{"train_min_length", o.train_min_length},
                                  {"train_max_length", o.train_max_length},
                                  {"data_seed", o.data_seed},
                                  {"eval_samples", o.eval_samples},
                                  {"eval_batch_size", o.eval_batch_size}});
  run_json["model_config"] = xlstm::io::to_json(config);
  std::int64_t resumed_at = -1;
  if (!o.resume.empty()) {
    const auto position = xlstm::load_training_checkpoint(o.resume, model, adamw);
    const auto saved = position.extra.find("train_parity.run");
    if (saved == position.extra.end() ||
        Json::parse(saved->second)["model_config"] != run_json["model_config"]) {
      throw UsageError("--resume: '" + o.resume +
                       "' was saved with another model configuration than these options give");
    }
    trainer.set_schedule_steps(position.schedule_steps);
    batches.skip(position.batches_drawn);
    resumed_at = position.step_count;
  }
  const std::int64_t first_step = adamw.step_count();
  if (first_step >= (o.stop_at_step > 0 ? o.stop_at_step : recipe.steps)) {
    throw UsageError(format("--steps / --stop-at-step must exceed the step of --resume (%lld)",
                            (long long)first_step));
  }

  std::printf("model: xLSTM, %lld blocks [%s] (1 = sLSTM), E=%lld, %lld head(s), %zu parameters\n",
              (long long)o.model.num_blocks, config.block_map_string().c_str(),
              (long long)o.model.embedding_dim, (long long)o.model.num_heads,
              trainer.parameter_count());
  std::printf(
      "recipe: %lld steps, batch %lld, AdamW lr %g (warm-up %lld, cosine to %g), wd %g, clip %s; "
      "train lengths %lld-%lld; %d thread(s)\n",
      (long long)recipe.steps, (long long)recipe.batch_size, recipe.lr,
      (long long)recipe.warmup_steps, recipe.lr * recipe.lr_decay_factor, recipe.weight_decay,
      recipe.max_grad_norm > 0 ? format("%g", recipe.max_grad_norm).c_str() : "off",
      (long long)o.train_min_length, (long long)o.train_max_length, xlstm::num_threads());
  if (first_step > 0) {
    std::printf("resumed from %s at step %lld\n", o.resume.c_str(), (long long)first_step);
  }
  const auto eval_batches =
      validation_batches(*data.validation().front(), o.eval_samples, o.eval_batch_size);
  const auto in_dist_batches = validation_batches(data.split("validation_in_distribution"),
                                                  o.in_dist_samples, o.eval_batch_size);

  Json log = run_json;
  if (resumed_at >= 0) {
    log["resumed_from"] = o.resume;
    log["resumed_at_step"] = resumed_at;
  }
  log["steps"] = Json::array();
  log["evaluations"] = Json::array();
  auto write_log = [&] {
    if (!o.log.empty()) train_example::write_json_file(log, o.log);
  };
  auto save = [&] {
    if (o.save.empty()) return;
    xlstm::TrainingPosition position;
    position.step_count = adamw.step_count();
    position.schedule_steps = trainer.schedule_steps();
    position.batches_drawn = batches.batches_drawn();
    position.learning_rate = adamw.learning_rate();
    position.extra["train_parity.run"] = run_json.dump();
    xlstm::save_training_checkpoint(o.save, model, adamw, position);
  };

  train_example::Progress progress(o.print_every);
  xlstm::FormalLanguageBatch batch;
  xlstm::SequenceAccuracy window_accuracy;
  std::vector<double> losses;
  double window_tokens = 0, window_seconds = 0, train_seconds = 0;
  std::int64_t window_steps = 0;
  Json last_eval;
  std::unique_ptr<Evaluation> final_eval;
  const std::int64_t end_step = o.stop_at_step > 0 ? o.stop_at_step : recipe.steps;
  for (std::int64_t step = first_step + 1; step <= end_step; ++step) {
    const auto start = Clock::now();
    batches.next(batch);
    const auto result = trainer.step(batch.inputs, batch.targets, batch.lengths);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    double tokens = 0;  // positions run: each row up to its answer
    for (Index length : batch.lengths) tokens += double(length);
    window_accuracy.update(trainer.logits(), batch.targets);
    losses.push_back(double(result.loss));
    window_tokens += tokens;
    window_seconds += seconds;
    train_seconds += seconds;
    ++window_steps;

    Json entry;
    entry["step"] = step;
    entry["loss"] = result.loss;
    entry["lr"] = result.lr;
    entry["grad_norm"] = result.grad_norm;
    entry["tokens"] = tokens;
    entry["tokens_per_s"] = tokens / seconds;
    log["steps"].push_back(entry);
    if (!std::isfinite(result.loss)) {
      progress.line(
          format("step %lld: the loss is %g; stopping", (long long)step, double(result.loss)));
      write_log();
      return 1;
    }

    const bool last = step == recipe.steps || step == o.stop_at_step;
    const double eta = double(end_step - step) * train_seconds / double(step - first_step);
    progress.update(
        step,
        format("step %lld/%lld | loss %.4f (avg %.4f) | train acc %.3f | lr %.2e | gnorm %.3f | "
               "%.0f tok/s | %.2f step/s | ETA %s",
               (long long)step, (long long)recipe.steps, double(result.loss),
               train_example::mean_of_last(losses, std::size_t(window_steps)),
               window_accuracy.value(), result.lr, result.grad_norm, window_tokens / window_seconds,
               double(window_steps) / window_seconds, train_example::duration_string(eta).c_str()),
        last);
    if (step % o.print_every == 0 || last) {  // the window: the last print_every steps
      window_accuracy.reset();
      window_tokens = window_seconds = 0;
      window_steps = 0;
    }
    if ((o.eval_every > 0 && step % o.eval_every == 0) || last) {
      if (!eval_batches.empty() || !in_dist_batches.empty()) {
        Evaluation e = evaluate(model, eval_batches, in_dist_batches, step);
        progress.line(e.line);
        log["evaluations"].push_back(e.json);
        last_eval = e.json;
        final_eval = std::make_unique<Evaluation>(std::move(e));
      }
      write_log();
      save();
    }
  }
  progress.finish();

  const std::int64_t run_steps = end_step - first_step;
  const auto tail =
      std::size_t(std::min<std::int64_t>(50, std::max<std::int64_t>(1, run_steps / 10)));
  const double final_loss = train_example::mean_of_last(losses, tail);
  log["final"]["train_loss_mean_last_steps"] = final_loss;
  log["final"]["train_loss_steps_averaged"] = tail;
  log["final"]["train_seconds"] = train_seconds;
  if (!last_eval.is_null()) log["final"]["evaluation"] = last_eval;
  write_log();
  std::printf("done: %lld steps in %s (%.2f step/s); mean loss of the last %zu steps %.4f\n",
              (long long)run_steps, train_example::duration_string(train_seconds).c_str(),
              double(run_steps) / train_seconds, tail, final_loss);
  if (!o.log.empty()) std::printf("log: %s\n", o.log.c_str());
  if (!o.save.empty()) std::printf("checkpoint: %s\n", o.save.c_str());
  const int loss_check =
      train_example::expect_below("final loss", final_loss, o.expect_final_loss_below);
  return std::max(loss_check, check_expectations(o.expectations, final_eval.get()));
}

}  // namespace

int main(int argc, char** argv) {
  return train_example::main(argc, argv, "train_parity", kUsage, parse, run);
}
