// TiRex, the xLSTM time-series forecaster (math §13): everything in one include.
#pragma once

#include "xlstm/tirex/checkpoint.hpp"
#include "xlstm/tirex/config.hpp"
#include "xlstm/tirex/forecast.hpp"
#include "xlstm/tirex/model.hpp"
#include "xlstm/tirex/patch_tokens.hpp"
#include "xlstm/tirex/random_weights.hpp"
#include "xlstm/tirex/scaler.hpp"
#include "xlstm/tirex/stream.hpp"
