// The backward pass of the block stack (math §6.6): through the post-blocks
// LayerNorm and every block in reverse order (blocks/*_block_backward.hpp),
// with respect to the parameters, the input and the initial state, for ragged
// batches.
//
//   xlstm::BlockStackTape<float> tape;
//   stack.forward(x, lengths, state, y, tape);         // records
//   xlstm::BlockStackGradients<float> grads(stack);   // zeros, named like the parameters
//   auto grad_state = stack.initial_state(batch);     // cotangent of the final state
//   xlstm::Sequence<float> grad_x;
//   xlstm::backward(stack, tape, grad_y, grad_state, grads, grad_x);
#pragma once

#include <string>
#include <variant>
#include <vector>

#include "xlstm/blocks/mlstm_block_backward.hpp"
#include "xlstm/blocks/slstm_block_backward.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/layer_norm_backward.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/model/block_stack.hpp"

namespace xlstm {

/// The gradients of a BlockStack's parameters: one gradient object per block
/// and the post-blocks norm's, under the stack's names and shapes (design §7.2).
template <typename Scalar_>
class BlockStackGradients {
 public:
  using Scalar = Scalar_;
  using Block = std::variant<MLstmBlockGradients<Scalar>, SLstmBlockGradients<Scalar>>;

  explicit BlockStackGradients(const BlockStack<Scalar>& stack)
      : has_post_blocks_norm_(stack.config().add_post_blocks_norm),
        post_blocks_norm_(stack.post_blocks_norm()) {
    blocks_.reserve(stack.blocks().size());
    for (const auto& b : stack.blocks()) {
      std::visit(
          [&](const auto& block) {
            using B = std::decay_t<decltype(block)>;
            if constexpr (std::is_same_v<B, MLstmBlock<Scalar>>) {
              blocks_.emplace_back(std::in_place_type<MLstmBlockGradients<Scalar>>, block);
            } else {
              blocks_.emplace_back(std::in_place_type<SLstmBlockGradients<Scalar>>, block);
            }
          },
          b);
    }
  }

  std::vector<Block>& blocks() { return blocks_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  GroupedNormGradients<Scalar>& post_blocks_norm() { return post_blocks_norm_; }

  /// Member by member, allocation-free (design §7.6).
  void zero() {
    for (auto& block : blocks_) std::visit([](auto& g) { g.zero(); }, block);
    post_blocks_norm_.zero();
  }

  XLSTM_PARAMETER_VISITOR

 private:
  template <typename Self, typename Visit>
  static void visit_parameters(Self& self, Visit& visit, const std::string& prefix) {
    for (std::size_t i = 0; i < self.blocks_.size(); ++i) {
      const std::string block_prefix = prefix + "blocks." + std::to_string(i) + ".";
      std::visit([&](auto& g) { g.for_each_parameter(visit, block_prefix); }, self.blocks_[i]);
    }
    if (self.has_post_blocks_norm_) {
      self.post_blocks_norm_.for_each_parameter(visit, prefix + "post_blocks_norm.");
    }
  }

  std::vector<Block> blocks_;
  bool has_post_blocks_norm_;
  GroupedNormGradients<Scalar> post_blocks_norm_;
};

/// The backward pass of `stack` over the forward recorded in `tape`
/// (math §6.6, design §7.4):
///  - `grad_y`: dL/dy, B x T x E (ignored past a row's length);
///  - `grad_state`: in, dL/d(final state) of every block (make it with
///    initial_state(batch): zeros when the loss does not see it); out,
///    dL/d(initial state);
///  - `grads`: dL/d(parameters) is added to it;
///  - `grad_x`: out, dL/dx, B x T x E (zero past a row's length); not grad_y.
/// Consumes the tape (its storage becomes the workspace). Allocates nothing
/// once grad_x has its size.
template <typename Scalar>
void backward(const BlockStack<Scalar>& stack, BlockStackTape<Scalar>& tape,
              const Sequence<Scalar>& grad_y, BlockStackState<Scalar>& grad_state,
              BlockStackGradients<Scalar>& grads, Sequence<Scalar>& grad_x) {
  const char* where = "backward (BlockStack)";
  check_tape_recorded(tape.recorded, where);
  const std::size_t num_blocks = stack.blocks().size();
  check(tape.blocks.size() == num_blocks && grads.blocks().size() == num_blocks, where,
        ": arguments 'tape' and 'grads' must belong to this stack of ", num_blocks, " blocks, got ",
        tape.blocks.size(), " and ", grads.blocks().size());
  const Index batch = tape.last.batch(), time = tape.last.time(), e = stack.embedding_dim();
  check(grad_y.batch() == batch && grad_y.time() == time && grad_y.features() == e, where,
        ": argument 'grad_y' must be ", batch, " x ", time, " x ", e,
        " (the forward's batch x time x embedding_dim), got ", grad_y.batch(), " x ", grad_y.time(),
        " x ", grad_y.features());
  check(&grad_y != &grad_x, where, ": arguments 'grad_y' and 'grad_x' must be different sequences");
  check(grad_state.blocks.size() == num_blocks && grad_state.batch() == batch, where,
        ": argument 'grad_state' must be a state of this stack for batch ", batch,
        " (make it with initial_state)");
  for (std::size_t i = 0; i < num_blocks; ++i) {
    check(tape.blocks[i].index() == stack.blocks()[i].index() &&
              grads.blocks()[i].index() == stack.blocks()[i].index() &&
              grad_state.blocks[i].index() == stack.blocks()[i].index(),
          where, ": the tape, gradients or state of block ", i, " are of the wrong block kind");
  }
  tape.recorded = false;  // from here on its storage is the workspace

  // dL/d(last block's output), in `ping` (zero past the lengths: the stack's
  // output is zero there whatever the blocks computed).
  Sequence<Scalar>* grad_out = &tape.ping;
  grad_out->resize(batch, time, e);
  if (stack.config().add_post_blocks_norm) {
    tape.pong = grad_y;
    zero_padding(tape.pong, tape.lengths);
    backward(stack.post_blocks_norm(), tape.last.matrix(), tape.pong.matrix(),
             grads.post_blocks_norm(), grad_out->matrix());
  } else {
    *grad_out = grad_y;
  }
  zero_padding(*grad_out, tape.lengths);
  for (std::size_t k = num_blocks; k-- > 0;) {
    Sequence<Scalar>* grad_in =
        k == 0 ? &grad_x : (grad_out == &tape.ping ? &tape.pong : &tape.ping);
    std::visit(
        [&](const auto& block) {
          using B = std::decay_t<decltype(block)>;
          using BlockTape = typename B::Tape;
          using BlockGradients =
              std::conditional_t<std::is_same_v<B, MLstmBlock<Scalar>>, MLstmBlockGradients<Scalar>,
                                 SLstmBlockGradients<Scalar>>;
          backward(block, std::get<BlockTape>(tape.blocks[k]), *grad_out,
                   std::get<typename B::State>(grad_state.blocks[k]),
                   std::get<BlockGradients>(grads.blocks()[k]), *grad_in);
        },
        stack.blocks()[k]);
    grad_out = grad_in;
  }
}

}  // namespace xlstm
