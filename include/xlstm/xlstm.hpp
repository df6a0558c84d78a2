// Umbrella header: the whole library.
#pragma once

#include "xlstm/version.hpp"

#include "xlstm/core/activations.hpp"
#include "xlstm/core/causal_conv1d.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/feedforward.hpp"
#include "xlstm/core/half.hpp"
#include "xlstm/core/init.hpp"
#include "xlstm/core/layer_norm.hpp"
#include "xlstm/core/linear.hpp"
#include "xlstm/core/matmul.hpp"
#include "xlstm/core/parallel.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/rms_norm.hpp"
#include "xlstm/core/rounding.hpp"
#include "xlstm/core/scratch.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/weight_matrix.hpp"

#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/mlstm_backward.hpp"
#include "xlstm/cells/slstm.hpp"
#include "xlstm/cells/slstm_backward.hpp"

#include "xlstm/blocks/large_block.hpp"
#include "xlstm/blocks/mlstm_block.hpp"
#include "xlstm/blocks/slstm_block.hpp"

#include "xlstm/model/block_stack.hpp"
#include "xlstm/model/generate.hpp"
#include "xlstm/model/language_model.hpp"
#include "xlstm/model/large_model.hpp"

#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/checkpoint_report.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/dtype.hpp"
#include "xlstm/io/large_checkpoint.hpp"
#include "xlstm/io/large_naming.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/shard_index.hpp"
#include "xlstm/io/state_io.hpp"
#include "xlstm/io/torch_checkpoint.hpp"
#include "xlstm/io/torch_pickle.hpp"
#include "xlstm/io/zip_archive.hpp"

// Last: extern template declarations for xlstm::precompiled (XLSTM_PRECOMPILED).
#include "xlstm/precompiled.hpp"
