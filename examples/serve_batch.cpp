// Continuous batching: requests with different prompt lengths arrive over
// time. The arrivals of a tick are prefilled together in one ragged forward
// pass, copied into free slots of a decoding batch (copy_row_from), decoded
// together with step (greedy), and leave when they have their tokens
// (reset_row frees the slot). At the end every sequence is checked against
// generating it alone with xlstm::generate; a mismatch exits with status 1.
#include <algorithm>
#include <string>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "xlstm/model/generate.hpp"
#include "xlstm/model/language_model.hpp"

namespace {

using Model = xlstm::LanguageModel<float>;
using Clock = std::chrono::steady_clock;
using xlstm::Index;

struct Request {
  Index arrival = 0;  ///< the decode tick at which it arrives
  std::vector<std::int64_t> prompt;
  std::size_t max_new = 0;  ///< tokens to generate
  std::vector<std::int64_t> generated;
  bool admitted = false;
};

// A small mixed stack: mLSTM, sLSTM, mLSTM, sLSTM.
Model make_model() {
  xlstm::LanguageModelConfig config;
  config.mlstm_block = xlstm::MLstmBlockConfig{};
  config.slstm_block = xlstm::SLstmBlockConfig{};
  config.num_blocks = 4;
  config.slstm_at = {1, 3};
  config.embedding_dim = 128;
  config.vocab_size = 512;
  Model model(config);
  xlstm::Rng rng(7);
  model.initialize(rng);
  return model;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    const bool help = std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h";
    std::printf(
        "usage: serve_batch\n"
        "A continuous-batching loop over 8 slots: requests arrive, prefill, decode and leave;\n"
        "every sequence is checked against generating it alone.\n");
    return help ? 0 : 2;
  }
  constexpr std::size_t kSlots = 8;
  const Model model = make_model();
  std::mt19937_64 rng(2024);
  std::uniform_int_distribution<std::size_t> prompt_length(3, 40), new_tokens(5, 30);
  std::uniform_int_distribution<Index> gap(0, 2);
  std::uniform_int_distribution<std::int64_t> token(0, model.vocab_size() - 1);
  std::vector<Request> requests(12);
  Index arrival = 0;
  for (Request& r : requests) {
    r.arrival = arrival += gap(rng);
    r.prompt.resize(prompt_length(rng));
    for (auto& id : r.prompt) id = token(rng);
    r.max_new = new_tokens(rng);
  }

  xlstm::TokenSampler pick{xlstm::GenerateOptions{}};  // temperature 0: argmax
  auto state = model.initial_state(Index(kSlots));
  std::vector<Request*> slots(kSlots, nullptr);
  std::vector<std::int64_t> next(kSlots, 0);  // the token each slot feeds next
  xlstm::Matrix<float> logits(Index(kSlots), model.vocab_size());
  std::size_t finished = 0, generated = 0;

  // Appends a token to the request in `slot`; a finished request leaves and
  // its slot is reset for the next one.
  auto emit = [&](std::size_t slot, std::int64_t id, Index tick) {
    Request& r = *slots[slot];
    r.generated.push_back(id);
    next[slot] = id;
    ++generated;
    if (r.generated.size() < r.max_new) return;
    std::printf("tick %3ld: request %2ld leaves slot %zu with %zu tokens\n", long(tick),
                long(&r - requests.data()), slot, r.max_new);
    slots[slot] = nullptr;
    state.reset_row(Index(slot));
    ++finished;
  };

  const auto start = Clock::now();
  for (Index tick = 0; finished < requests.size(); ++tick) {
    // Admit the arrived requests into free slots with one ragged prefill.
    const auto free_slots = std::size_t(std::count(slots.begin(), slots.end(), nullptr));
    std::vector<Request*> arrivals;
    for (Request& r : requests) {
      if (!r.admitted && r.arrival <= tick && arrivals.size() < free_slots) arrivals.push_back(&r);
    }
    if (!arrivals.empty()) {
      const Index batch = Index(arrivals.size());
      xlstm::Lengths lengths;
      for (const Request* r : arrivals) lengths.push_back(Index(r->prompt.size()));
      const Index longest = *std::max_element(lengths.begin(), lengths.end());
      xlstm::Tokens tokens = xlstm::Tokens::Zero(batch, longest);  // padding is never read
      std::printf("tick %3ld: prefill prompts of lengths", long(tick));
      for (Index i = 0; i < batch; ++i) {
        const auto& prompt = arrivals[std::size_t(i)]->prompt;
        for (std::size_t t = 0; t < prompt.size(); ++t) tokens(i, Index(t)) = prompt[t];
        std::printf(" %zu", prompt.size());
      }
      std::printf("\n");
      auto prefill = model.initial_state(batch);
      xlstm::Sequence<float> prompt_logits;
      model.forward(tokens, lengths, prefill, prompt_logits);
      for (Index i = 0; i < batch; ++i) {
        const auto slot =
            std::size_t(std::find(slots.begin(), slots.end(), nullptr) - slots.begin());
        state.copy_row_from(prefill, i, Index(slot));
        slots[slot] = arrivals[std::size_t(i)];
        slots[slot]->admitted = true;
        emit(slot, pick(prompt_logits.at(i, lengths[std::size_t(i)] - 1)), tick);
      }
    }
    // One decode step for the whole batch; free slots run on their last token
    // and their outputs are ignored.
    if (std::any_of(slots.begin(), slots.end(), [](const Request* r) { return r != nullptr; })) {
      model.step(next, state, logits);
      for (std::size_t s = 0; s < kSlots; ++s) {
        if (slots[s]) emit(s, pick(logits.row(Index(s))), tick);
      }
    }
  }
  const double batched = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%zu tokens in %.3f s: %.0f tokens/s (prefill included)\n", generated, batched,
              double(generated) / batched);

  // Every sequence again, alone, with the library's generate().
  std::size_t matches = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    xlstm::GenerateOptions options;
    options.max_length = Index(requests[i].max_new);
    if (xlstm::generate(model, {requests[i].prompt}, options).front() == requests[i].generated) {
      ++matches;
    } else {
      std::printf("MISMATCH: request %zu differs from generating it alone\n", i);
    }
  }
  if (matches != requests.size()) {
    std::printf("only %zu of %zu sequences match\n", matches, requests.size());
    return 1;
  }
  std::printf("all %zu sequences match\n", requests.size());
  return 0;
}
