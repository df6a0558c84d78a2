// Umbrella header: the whole library.
#pragma once

#include "xlstm/version.hpp"

#include "xlstm/core/activations.hpp"
#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/tensor.hpp"

#include "xlstm/cells/mlstm.hpp"
#include "xlstm/cells/slstm.hpp"

#include "xlstm/io/checkpoint.hpp"
#include "xlstm/io/safetensors.hpp"
