// Loading TiRex weights (math §13.7): the official `model.ckpt` (a PyTorch Lightning
// checkpoint: the config in `hyper_parameters`, the weights in `state_dict` with the
// `block_stack.` prefix rule) or a safetensors file with the official state_dict keys.
#pragma once

#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/pickle_json.hpp"
#include "xlstm/io/torch_checkpoint.hpp"
#include "xlstm/tirex/config.hpp"
#include "xlstm/tirex/model.hpp"

namespace xlstm::tirex {

/// The config of an official TiRex checkpoint: its `hyper_parameters`
/// ({"model_config": {...}, "train_ctx_len": W}; math §13.1).
inline TiRexConfig tirex_config_from_checkpoint(const io::TorchCheckpoint& checkpoint) {
  const io::PickledValue* hyper = checkpoint.hyper_parameters();
  check(hyper != nullptr, checkpoint.name(),
        ": no 'hyper_parameters' (an official TiRex checkpoint holds its config there)");
  return tirex_config_from_json(io::pickled_to_json(*hyper, "hyper_parameters"));
}

/// Fills `model` from the state dict of an official TiRex checkpoint: every
/// "block_stack." removed from the keys (the official on_load_checkpoint),
/// the sLSTM kernels and biases converted from their stored layout
/// (math §13.7), every tensor required and none left over. Throws
/// xlstm::Error listing every mismatch (e.g. a checkpoint of another shape);
/// then the model is unchanged.
template <typename Scalar>
void load_tirex_weights(TiRexModel<Scalar>& model, const io::TorchCheckpoint& checkpoint,
                        const io::LoadOptions& options = {}) {
  io::load_module(model, checkpoint.to_safetensors(io::tirex_state_dict_key), options);
}

/// Fills `model` from a safetensors file with the official keys (under
/// options.prefix); the same rules and guarantees.
template <typename Scalar>
void load_tirex_weights(TiRexModel<Scalar>& model, const io::SafetensorsFile& file,
                        const io::LoadOptions& options = {}) {
  io::load_module(model, file, options);
}

/// The model of an official TiRex checkpoint (`model.ckpt`): config from its
/// hyper_parameters, weights from its state dict. `numerics` picks the cell
/// numerics (math §12; the official bf16 path by default).
template <typename Scalar>
TiRexModel<Scalar> load_tirex_checkpoint(const std::string& path,
                                         SLstmNumerics numerics = SLstmNumerics::tirex_official) {
  const io::TorchCheckpoint checkpoint = io::TorchCheckpoint::open(path);
  TiRexConfig config = tirex_config_from_checkpoint(checkpoint);
  config.numerics = numerics;
  TiRexModel<Scalar> model(config);
  load_tirex_weights(model, checkpoint);
  return model;
}

}  // namespace xlstm::tirex
