// Loading TiRex weights (math §13.7): the official `model.ckpt` (a PyTorch Lightning
// checkpoint: the config in `hyper_parameters`, the weights in `state_dict` with the
// `block_stack.` prefix rule) or a safetensors file with the official state_dict keys.
#pragma once

#include <string>
#include <vector>

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
/// then the model is unchanged. Prepares the bf16 kernels and the padding states
/// (TiRexModel::prepare).
template <typename Scalar>
void load_tirex_weights(TiRexModel<Scalar>& model, const io::TorchCheckpoint& checkpoint,
                        const io::LoadOptions& options = {}) {
  io::load_module(model, checkpoint.to_safetensors(io::tirex_state_dict_key), options);
  model.prepare();
}

/// Fills `model` from a safetensors file with the official keys (under
/// options.prefix); the same rules and guarantees.
template <typename Scalar>
void load_tirex_weights(TiRexModel<Scalar>& model, const io::SafetensorsFile& file,
                        const io::LoadOptions& options = {}) {
  io::load_module(model, file, options);
  model.prepare();
}

/// Adds the model's parameters to `writer` as the official TiRex state dict
/// (math §13.7): the official keys, and each cell's `_recurrent_kernel_` as
/// (NH, DH, 4DH) with its `_bias_` head-major, the layout TiRex stores (the
/// model holds them in the vanilla layout). Loading the result gives the
/// same model; the official code loads it too.
template <typename Scalar>
void add_tirex_weights(io::SafetensorsWriter& writer, const TiRexModel<Scalar>& model) {
  auto is_cell_tensor = [](const std::string& name) {
    return io::detail::ends_with(name, "slstm_cell._recurrent_kernel_") ||
           io::detail::ends_with(name, "slstm_cell._bias_");
  };
  std::vector<ConstParameterRef<Scalar>> others;
  for (const auto& p : parameter_list(model, "")) {
    if (!is_cell_tensor(p.name)) others.push_back(p);
  }
  io::add_targets(writer, io::tensor_targets(others));
  const TiRexConfig& c = model.config();
  const auto nh = std::size_t(c.num_heads), dh = std::size_t(c.head_dim());
  Matrix<Scalar> kernel;
  Vector<Scalar> bias;
  for (Index i = 0; i < model.num_blocks(); ++i) {
    model.block(i).cell().get_cuda_layout(kernel, bias);
    const std::string prefix = "blocks." + std::to_string(i) + ".slstm_layer.slstm_cell.";
    writer.add(prefix + "_recurrent_kernel_", {nh, dh, 4 * dh}, kernel.data());
    writer.add(prefix + "_bias_", {4 * nh * dh}, bias.data());
  }
}

/// Saves the model as a safetensors file of the official TiRex state dict
/// (add_tirex_weights).
template <typename Scalar>
void save_tirex_weights(const TiRexModel<Scalar>& model, const std::string& path) {
  io::SafetensorsWriter writer;
  add_tirex_weights(writer, model);
  writer.save(path);
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
