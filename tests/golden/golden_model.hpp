// Golden runners for blocks, stacks and the NeurIPS language model
// (golden README §5.3-§5.7). Modules are built from the file's `config` with the
// public config reader and loaded with the public checkpoint loader.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "golden/golden_case.hpp"
#include "xlstm/blocks/mlstm_block_backward.hpp"
#include "xlstm/blocks/slstm_block_backward.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/large_checkpoint.hpp"
#include "xlstm/io/state_io.hpp"
#include "xlstm/model/block_stack_backward.hpp"
#include "xlstm/model/language_model_backward.hpp"
#include "xlstm/train/adamw.hpp"
#include "xlstm/train/lr_schedule.hpp"
#include "xlstm/train/trainable_parameters.hpp"

namespace golden {

/// Compares every tensor of `state` (official step-state names,
/// golden README §5.7; sliced tensors joined) with the file's tensor `prefix + name`.
template <typename Scalar, typename State>
void compare_state(GoldenCase& g, const State& state, const std::string& prefix) {
  std::map<std::string, std::vector<double>> tensors;
  state.for_each_tensor(
      [&](const xlstm::ConstParameterRef<Scalar>& r) {
        ASSERT_TRUE(g.has(r.name)) << "state tensor " << r.name << " is not in the golden file";
        EXPECT_EQ(r.shape, g.shape(r.name)) << r.name;
        auto& values = tensors[r.name];
        values.resize(r.size());
        std::copy(r.data, r.data + r.slice_size(),
                  values.begin() + std::ptrdiff_t(r.part * r.slice_size()));
      },
      prefix);
  for (const auto& [name, values] : tensors) g.compare(name, values);
}

/// Reads the file's tensors `prefix + name` into `state` (sliced tensors split).
template <typename Scalar, typename State>
void read_state(const GoldenCase& g, State& state, const std::string& prefix) {
  state.for_each_tensor(
      [&](const xlstm::ParameterRef<Scalar>& r) {
        const auto values = g.values<Scalar>(r.name);
        ASSERT_EQ(values.size(), r.size()) << r.name;
        const auto first = values.begin() + std::ptrdiff_t(r.part * r.slice_size());
        std::copy(first, first + std::ptrdiff_t(r.slice_size()), r.data);
      },
      prefix);
}

/// Whether the file has a tensor whose name starts with `prefix`.
inline bool has_prefix(const GoldenCase& g, const std::string& prefix) {
  for (const auto& name : g.file().names()) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

/// Compares every gradient tensor of `grads` with the file's `grad.param.<name>`.
template <typename Grads>
void compare_parameter_gradients(GoldenCase& g, const Grads& grads) {
  grads.for_each_parameter(
      [&](const auto& p) { g.compare(p.name, std::vector<double>(p.data, p.data + p.size())); },
      "grad.param.");
}

template <typename Module>
void run_sequence_module(GoldenCase& g, Module& module) {
  xlstm::io::load_module(module, g.file(), {"param."});
  const auto x = g.sequence<typename Module::Scalar>("input.x");
  auto state = module.initial_state(x.batch());
  Sequence<typename Module::Scalar> y;
  module.forward(x, state, y);
  g.compare("output.y", y);
}

template <typename Scalar>
void run_mlstm_block(GoldenCase& g) {
  xlstm::MLstmBlock<Scalar> block(xlstm::io::mlstm_block_config_from_json(g.config()));
  run_sequence_module(g, block);
}

template <typename Scalar>
void run_slstm_block(GoldenCase& g) {
  xlstm::SLstmBlock<Scalar> block(xlstm::io::slstm_block_config_from_json(g.config()));
  run_sequence_module(g, block);
}

/// The block gradient kinds (golden README §11.5, §11.6): the recorded
/// forward, then the backward with the file's cotangents. An initial state
/// (`state_in.*`, the step-state names) and final-state cotangents are used
/// where the file has them.
template <typename Block, typename Tape, typename Grads>
void run_block_grad(GoldenCase& g, Block& block) {
  using Scalar = typename Block::Scalar;
  xlstm::io::load_module(block, g.file(), {"param."});
  const auto x = g.sequence<Scalar>("input.x");
  auto state = block.initial_state(x.batch());
  const bool state_in = has_prefix(g, "state_in.");
  if (state_in) read_state<Scalar>(g, state, "state_in.");
  Sequence<Scalar> y;
  Tape tape;
  block.forward(x, state, y, tape);
  g.compare("output.y", y);
  if (has_prefix(g, "state_out.")) compare_state<Scalar>(g, state, "state_out.");

  auto grad_state = block.initial_state(x.batch());
  if (has_prefix(g, "input.grad_state_out.")) {
    read_state<Scalar>(g, grad_state, "input.grad_state_out.");
  }
  Grads grads(block);
  Sequence<Scalar> grad_x;
  xlstm::backward(block, tape, g.sequence<Scalar>("input.grad_output.y"), grad_state, grads,
                  grad_x);
  compare_parameter_gradients(g, grads);
  g.compare("grad.input.x", grad_x);
  if (state_in) compare_state<Scalar>(g, grad_state, "grad.state_in.");
}

/// slstm_block_grad (golden README §11.5).
template <typename Scalar>
void run_slstm_block_grad(GoldenCase& g) {
  xlstm::SLstmBlock<Scalar> block(xlstm::io::slstm_block_config_from_json(g.config()));
  run_block_grad<xlstm::SLstmBlock<Scalar>, xlstm::SLstmBlockTape<Scalar>,
                 xlstm::SLstmBlockGradients<Scalar>>(g, block);
}

/// mlstm_block_grad (golden README §11.6): the cell in the form the plain
/// forward picks (parallel from the zero state, as the official block).
template <typename Scalar>
void run_mlstm_block_grad(GoldenCase& g) {
  xlstm::MLstmBlock<Scalar> block(xlstm::io::mlstm_block_config_from_json(g.config()));
  run_block_grad<xlstm::MLstmBlock<Scalar>, xlstm::MLstmBlockTape<Scalar>,
                 xlstm::MLstmBlockGradients<Scalar>>(g, block);
}

template <typename Scalar>
void run_block_stack(GoldenCase& g) {
  xlstm::BlockStack<Scalar> stack(xlstm::io::block_stack_config_from_json(g.config()));
  run_sequence_module(g, stack);
}

/// block_stack_grad (golden README §11.7): the recorded forward of the
/// stack, then its backward with the file's cotangent of y.
template <typename Scalar>
void run_block_stack_grad(GoldenCase& g) {
  xlstm::BlockStack<Scalar> stack(xlstm::io::block_stack_config_from_json(g.config()));
  xlstm::io::load_module(stack, g.file(), {"param."});
  const auto x = g.sequence<Scalar>("input.x");
  auto state = stack.initial_state(x.batch());
  Sequence<Scalar> y;
  xlstm::BlockStackTape<Scalar> tape;
  stack.forward(x, state, y, tape);
  g.compare("output.y", y);

  auto grad_state = stack.initial_state(x.batch());
  xlstm::BlockStackGradients<Scalar> grads(stack);
  Sequence<Scalar> grad_x;
  xlstm::backward(stack, tape, g.sequence<Scalar>("input.grad_output.y"), grad_state, grads,
                  grad_x);
  compare_parameter_gradients(g, grads);
  g.compare("grad.input.x", grad_x);
}

/// The file's int64 tensor `name` of shape (B, T), or batch `s` of an (S, B, T) one.
inline xlstm::Tokens tokens_of(const GoldenCase& g, const std::string& name = "input.tokens",
                               Index s = -1) {
  const auto shape = g.shape(name);
  if (s < 0) {
    xlstm::Tokens tokens{Index(shape[0]), Index(shape[1])};
    g.file().read_into<std::int64_t>(name, tokens.data(), std::size_t(tokens.size()));
    return tokens;
  }
  xlstm::Tokens all{Index(shape[0]), Index(shape[1] * shape[2])};
  g.file().read_into<std::int64_t>(name, all.data(), std::size_t(all.size()));
  xlstm::Tokens tokens{Index(shape[1]), Index(shape[2])};
  for (Index b = 0; b < tokens.rows(); ++b) {
    tokens.row(b) = all.row(s).segment(b * tokens.cols(), tokens.cols());
  }
  return tokens;
}

/// lm_model_grad (golden README §11.7): logits, the mean cross-entropy and
/// its gradient with respect to every parameter (a tied head under both names).
template <typename Scalar>
void run_lm_model_grad(GoldenCase& g) {
  xlstm::LanguageModel<Scalar> model(xlstm::io::language_model_config_from_json(g.config()));
  xlstm::io::load_module(model, g.file(), {"param."});
  const auto tokens = tokens_of(g), targets = tokens_of(g, "input.targets");
  xlstm::LanguageModelGradients<Scalar> grads(model);
  xlstm::LanguageModelLossWorkspace<Scalar> work;
  const Scalar loss = xlstm::loss_and_backward(model, tokens, targets, grads, work);
  g.compare("output.logits", work.logits);
  g.compare("output.loss", std::vector<double>{double(loss)});
  compare_parameter_gradients(g, grads);
}

/// lm_train_steps (golden README §11.7): S AdamW steps with the official
/// weight-decay groups and the file's learning-rate schedule: the losses, the
/// gradient of the first step, the final parameters and both moments.
template <typename Scalar>
void run_lm_train_steps(GoldenCase& g) {
  const auto config = xlstm::io::language_model_config_from_json(g.config());
  xlstm::LanguageModel<Scalar> model(config);
  xlstm::io::load_module(model, g.file(), {"param."});
  xlstm::LanguageModelGradients<Scalar> grads(model);
  xlstm::TrainableParameters<Scalar> parameters(
      model, grads, xlstm::official_weight_decay_rule(config.weight_decay_on_embedding));
  // The groups are the official ones (a tied head is listed once, under
  // token_embedding.weight; the file lists both of its keys).
  auto listed = [&](const char* key) {
    auto names = nlohmann::json::parse(g.meta(key)).get<std::vector<std::string>>();
    names.erase(std::remove(names.begin(), names.end(), std::string("lm_head.weight")),
                names.end());
    std::sort(names.begin(), names.end());
    return names;
  };
  auto sorted = [](std::vector<std::string> names) {
    names.erase(std::remove(names.begin(), names.end(), std::string("lm_head.weight")),
                names.end());
    std::sort(names.begin(), names.end());
    return names;
  };
  EXPECT_EQ(sorted(parameters.names(true)), listed("weight_decay_params"));
  EXPECT_EQ(sorted(parameters.names(false)), listed("no_weight_decay_params"));

  const auto optimizer = nlohmann::json::parse(g.meta("optimizer"));
  ASSERT_EQ(optimizer.at("type").get<std::string>(), "torch.optim.AdamW");
  ASSERT_FALSE(optimizer.at("amsgrad").get<bool>());
  ASSERT_FALSE(optimizer.at("maximize").get<bool>());
  xlstm::AdamWOptions options;
  options.learning_rate = optimizer.at("lr").get<double>();
  options.beta1 = optimizer.at("betas").at(0).get<double>();
  options.beta2 = optimizer.at("betas").at(1).get<double>();
  options.eps = optimizer.at("eps").get<double>();
  options.weight_decay = optimizer.at("weight_decay").get<double>();
  xlstm::AdamW<Scalar> adamw(parameters, options);
  const auto& schedule_json = optimizer.at("lr_schedule");
  const bool scheduled = schedule_json.is_object();
  xlstm::LinearWarmupCosine schedule;
  if (scheduled) {
    ASSERT_EQ(schedule_json.at("type").get<std::string>(), "linear_warmup_cosine");
    schedule.warmup_steps = schedule_json.at("warmup_steps").get<std::int64_t>();
    schedule.decay_until_step = schedule_json.at("decay_until_step").get<std::int64_t>();
    schedule.max_lr = schedule_json.at("max_lr").get<double>();
    schedule.min_lr = schedule_json.at("min_lr").get<double>();
    schedule.validate();
  } else {
    ASSERT_EQ(schedule_json.get<std::string>(), "constant");
  }

  const Index steps = Index(std::stoll(g.meta("steps")));
  ASSERT_EQ(g.shape("input.tokens")[0], std::size_t(steps));
  std::vector<double> losses, rates;
  xlstm::LanguageModelLossWorkspace<Scalar> work;
  for (Index s = 0; s < steps; ++s) {
    grads.zero();
    losses.push_back(double(xlstm::loss_and_backward(
        model, tokens_of(g, "input.tokens", s), tokens_of(g, "input.targets", s), grads, work)));
    if (s == 0) compare_parameter_gradients(g, grads);
    if (scheduled) adamw.set_learning_rate(schedule(s));
    rates.push_back(double(Scalar(adamw.learning_rate())));
    adamw.step();
  }
  g.compare("output.losses", losses);
  if (g.has("output.lr")) g.compare("output.lr", rates);

  // Final parameters and moments; a tied head's keys hold the embedding's.
  model.for_each_parameter(
      [&](const auto& p) { g.compare(p.name, std::vector<double>(p.data, p.data + p.size())); },
      "state_out.param.");
  std::map<std::string, std::vector<double>> moments;
  adamw.for_each_parameter(
      [&](const auto& p) { moments[p.name] = std::vector<double>(p.data, p.data + p.size()); },
      "state_out.");
  for (const char* moment : {"exp_avg.", "exp_avg_sq."}) {
    const std::string prefix = std::string("state_out.") + moment;
    for (const auto& [name, values] : moments) {
      if (name.rfind(prefix, 0) == 0) g.compare(name, values);
    }
    if (config.tie_weights) {
      g.compare(prefix + "lm_head.weight", moments.at(prefix + "token_embedding.weight"));
    }
  }
}

template <typename Scalar>
void run_lm_model(GoldenCase& g) {
  xlstm::LanguageModel<Scalar> model(xlstm::io::language_model_config_from_json(g.config()));
  xlstm::io::load_module(model, g.file(), {"param."});
  const auto tokens = tokens_of(g);
  auto state = model.initial_state(tokens.rows());
  Sequence<Scalar> logits;
  model.forward(tokens, state, logits);
  g.compare("output.logits", logits);
}

/// Token by token with step(); also the full forward of the same model, and
/// the final step states through the public state writer.
template <typename Scalar>
void run_lm_step(GoldenCase& g) {
  xlstm::LanguageModel<Scalar> model(xlstm::io::language_model_config_from_json(g.config()));
  xlstm::io::load_module(model, g.file(), {"param."});
  const auto tokens = tokens_of(g);
  const Index batch = tokens.rows(), time = tokens.cols();

  auto state = model.initial_state(batch);
  Sequence<Scalar> logits(batch, time, model.vocab_size());
  xlstm::Matrix<Scalar> step_logits(batch, model.vocab_size());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(batch));
  for (Index t = 0; t < time; ++t) {
    for (Index b = 0; b < batch; ++b) ids[std::size_t(b)] = tokens(b, t);
    model.step(ids, state, step_logits);
    for (Index b = 0; b < batch; ++b) logits.at(b, t) = step_logits.row(b);
  }
  g.compare("output.logits", logits);

  compare_state<Scalar>(g, state.stack, "state_out.");

  auto fresh = model.initial_state(batch);
  Sequence<Scalar> forward_logits;
  model.forward(tokens, fresh, forward_logits);
  g.compare("output.logits_forward", forward_logits);
}

/// xLSTM-Large (golden README §5.8): full-sequence logits, final states (kernel
/// convention) and, in inference-mode files, token-by-token logits. The model
/// is also saved in fused weight mode and reloaded, and the fused model must
/// give the same logits: both weight modes are checked against the file.
template <typename Scalar>
void run_xlstm_large(GoldenCase& g) {
  namespace io = xlstm::io;
  const auto config = io::large_model_config_from_json(g.config());
  io::LargeLoadOptions options;
  options.prefix = "param.";
  const auto files = io::CheckpointFiles::from_file(g.file());
  const auto model = io::load_large_model<Scalar>(files, config, options);
  const auto tokens = tokens_of(g);
  const Index batch = tokens.rows(), time = tokens.cols();

  auto state = model.initial_state(batch);
  Sequence<Scalar> logits;
  model.forward(tokens, state, logits);
  g.compare("output.logits", logits);
  for (std::size_t b = 0; b < state.blocks.size(); ++b) {
    const std::string p = "state_out.block_" + std::to_string(b) + ".";
    g.compare(p + "c", GoldenCase::to_double(state.blocks[b].cell.C));
    g.compare(p + "n", GoldenCase::to_double(state.blocks[b].cell.n));
    g.compare(p + "m", GoldenCase::to_double(state.blocks[b].cell.m));
  }

  if (g.has("output.logits_step")) {
    auto step_state = model.initial_state(batch);
    Sequence<Scalar> step_logits(batch, time, model.vocab_size());
    xlstm::Matrix<Scalar> row(batch, model.vocab_size());
    std::vector<std::int64_t> ids(static_cast<std::size_t>(batch));
    for (Index t = 0; t < time; ++t) {
      for (Index b = 0; b < batch; ++b) ids[std::size_t(b)] = tokens(b, t);
      model.step(ids, step_state, row);
      for (Index b = 0; b < batch; ++b) step_logits.at(b, t) = row.row(b);
    }
    g.compare("output.logits_step", step_logits);
  }

  // The other weight mode: save fused, reload, same logits within the file's tolerance.
  const std::string dir = ::testing::TempDir() + "/xlstm_large_fused_" + g.dtype();
  io::save_large_model(model, dir, io::LargeNaming::official, /*fused=*/true, std::nullopt, 1,
                       /*as_directory=*/true);
  const auto fused = io::load_large_model<Scalar>(dir);
  ASSERT_EQ(fused.config().weight_mode, "fused");
  auto fused_state = fused.initial_state(batch);
  Sequence<Scalar> fused_logits;
  fused.forward(tokens, fused_state, fused_logits);
  g.compare("output.logits", fused_logits);
}

}  // namespace golden
