// Reading and writing safetensors files: includes the reader and the writer.
#pragma once

#include "xlstm/io/safetensors_reader.hpp"
#include "xlstm/io/safetensors_writer.hpp"
