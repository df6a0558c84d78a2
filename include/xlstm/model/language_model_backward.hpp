// The backward pass of the NeurIPS language model (math §6.6): the head
// (tied or not), the block stack (model/block_stack_backward.hpp) and the
// embedding, and the training loss of the official trainers, the mean
// cross-entropy with ignore index -1 (math §6.5), in one call.
//
//   xlstm::LanguageModelGradients<float> grads(model);      // zeros
//   xlstm::LanguageModelLossWorkspace<float> work;          // reused across steps
//   grads.zero();
//   const float loss = xlstm::loss_and_backward(model, tokens, targets, grads, work);
//   // grads += dloss/dparameters; then an optimiser step (train/adamw.hpp)
#pragma once

#include <cstdint>
#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/core/linear_backward.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/model/block_stack_backward.hpp"
#include "xlstm/model/cross_entropy.hpp"
#include "xlstm/model/language_model.hpp"

namespace xlstm {

/// The gradients of a LanguageModel's parameters under its names and shapes
/// (design §7.2). With tie_weights, `token_embedding.weight` and
/// `lm_head.weight` are one tensor, listed under both names (as the
/// official state_dict lists it): its gradient is the sum of both uses.
template <typename Scalar_>
class LanguageModelGradients {
 public:
  using Scalar = Scalar_;

  explicit LanguageModelGradients(const LanguageModel<Scalar>& model)
      : tied_(model.config().tie_weights),
        embedding_(model.embedding_layer()),
        lm_head_(tied_ ? LinearGradients<Scalar>(Linear<Scalar>())
                       : LinearGradients<Scalar>(model.lm_head_layer())),
        stack_(model.stack()) {}

  LinearGradients<Scalar>& embedding() { return embedding_; }
  /// The head's gradient: with tie_weights the embedding's.
  LinearGradients<Scalar>& lm_head() { return tied_ ? embedding_ : lm_head_; }
  BlockStackGradients<Scalar>& stack() { return stack_; }

  /// Member by member, allocation-free (design §7.6).
  void zero() {
    embedding_.zero();
    lm_head_.zero();
    stack_.zero();
  }

  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    auto& embedding = self.embedding_.weight();
    auto& head = self.tied_ ? self.embedding_.weight() : self.lm_head_.weight();
    visit_parameter(visit, prefix, "token_embedding.weight",
                    Shape{std::size_t(embedding.rows()), std::size_t(embedding.cols())}, embedding);
    self.stack_.for_each_parameter(visit, prefix + "xlstm_block_stack.");
    visit_parameter(visit, prefix, "lm_head.weight",
                    Shape{std::size_t(head.rows()), std::size_t(head.cols())}, head,
                    /*optional=*/self.tied_);
  }

  bool tied_;
  LinearGradients<Scalar> embedding_, lm_head_;  ///< lm_head_ empty when tied
  BlockStackGradients<Scalar> stack_;
};

/// The backward pass of `model` over the forward recorded in `tape`
/// (math §6.6): `grad_logits` is dL/dlogits, B x T x V (ignored past a
/// row's length); `grad_state` is in dL/d(final state) (initial_state(batch)
/// when the loss does not see it), out dL/d(initial state); dL/d(parameters)
/// is added to `grads`. The embedding rows of tokens that do not occur get
/// nothing. Consumes the tape. Allocates nothing once the tape has its sizes.
template <typename Scalar>
void backward(const LanguageModel<Scalar>& model, LanguageModelTape<Scalar>& tape,
              const Sequence<Scalar>& grad_logits, LanguageModelState<Scalar>& grad_state,
              LanguageModelGradients<Scalar>& grads) {
  const char* where = "backward (LanguageModel)";
  check_tape_recorded(tape.recorded, where);
  const Index batch = tape.tokens.rows(), time = tape.tokens.cols();
  check(grad_logits.batch() == batch && grad_logits.time() == time &&
            grad_logits.features() == model.vocab_size(),
        where, ": argument 'grad_logits' must be ", batch, " x ", time, " x ", model.vocab_size(),
        " (the forward's batch x time x vocab_size), got ", grad_logits.batch(), " x ",
        grad_logits.time(), " x ", grad_logits.features());
  tape.recorded = false;

  // logits = hidden W^T: dL/dhidden = grad_logits W, dL/dW += grad_logits^T hidden.
  // The hidden rows past a row's length are zero, so they add nothing to dW;
  // their dL/dhidden is cleared by the stack's backward.
  backward(model.lm_head_layer(), tape.hidden.matrix(), grad_logits.matrix(), grads.lm_head(),
           tape.hidden.matrix());  // dL/dhidden over the head's input (allowed: math §1.11)
  backward(model.stack(), tape.stack, tape.hidden, grad_state.stack, grads.stack(), tape.embedded);
  // The embedding is a row lookup: its gradient collects dL/dx of each position
  // into the row of that position's token.
  auto& grad_embedding = grads.embedding().weight();
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t < length_of(tape.lengths, b, time); ++t) {
      grad_embedding.row(Index(tape.tokens(b, t))) += tape.embedded.at(b, t);
    }
  }
}

/// What loss_and_backward reuses from one call to the next: the tape, the
/// states, the logits and their gradient. With the same shapes a call
/// allocates nothing.
template <typename Scalar>
struct LanguageModelLossWorkspace {
  LanguageModelTape<Scalar> tape;
  LanguageModelState<Scalar> state, grad_state;
  Sequence<Scalar> logits, grad_logits;
};

/// One training example of the official trainers (math §6.5, §6.6): the
/// forward from a zero state, the mean cross-entropy of the logits against
/// `targets` (B x T, -1 = not counted) and its backward; adds
/// dloss/dparameters to `grads` and returns the loss (0, with no gradient,
/// when no target counts). `lengths` (optional) gives each row's valid
/// steps; targets past them must be -1.
template <typename Scalar>
Scalar loss_and_backward(const LanguageModel<Scalar>& model, const Tokens& tokens,
                         const Tokens& targets, const Lengths& lengths,
                         LanguageModelGradients<Scalar>& grads,
                         LanguageModelLossWorkspace<Scalar>& work) {
  const char* where = "loss_and_backward";
  const Index batch = tokens.rows(), time = tokens.cols();
  check(targets.rows() == batch && targets.cols() == time, where, ": argument 'targets' must be ",
        batch, " x ", time, " like 'tokens', got ", targets.rows(), " x ", targets.cols());
  check_lengths(lengths, batch, time, where);
  for (Index b = 0; b < batch; ++b) {
    for (Index t = length_of(lengths, b, time); t < time; ++t) {
      check(targets(b, t) == -1, where, ": argument 'targets'[", b, ", ", t, "] lies past row ", b,
            "'s length ", length_of(lengths, b, time), " and must be -1, got ", targets(b, t));
    }
  }
  for (auto* s : {&work.state, &work.grad_state}) {
    if (s->stack.blocks.empty() || s->batch() != batch) {
      *s = model.initial_state(batch);
    } else {
      s->reset();
    }
  }
  model.forward(tokens, lengths, work.state, work.logits, work.tape);
  const Scalar loss = cross_entropy(work.logits, targets, &work.grad_logits);
  backward(model, work.tape, work.grad_logits, work.grad_state, grads);
  return loss;
}

/// The same for a batch without per-row lengths.
template <typename Scalar>
Scalar loss_and_backward(const LanguageModel<Scalar>& model, const Tokens& tokens,
                         const Tokens& targets, LanguageModelGradients<Scalar>& grads,
                         LanguageModelLossWorkspace<Scalar>& work) {
  return loss_and_backward(model, tokens, targets, Lengths{}, grads, work);
}

}  // namespace xlstm
