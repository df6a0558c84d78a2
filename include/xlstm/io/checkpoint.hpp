// Loading and saving what a module (or a state) lists through its visitor
// (core/parameters.hpp), by name, from and to safetensors checkpoints.
//
// One engine serves both model families and the state files: the visited
// references are grouped into file tensors (slices of one tensor join, and
// io/large_naming.hpp joins the fused xLSTM-Large projections), every tensor
// is read and converted into a staging buffer first, and the module is
// written only when the whole checkpoint matched, so a failed load leaves it
// as it was. The error lists every missing, unexpected, misshaped, unusable
// or non-finite tensor (io/checkpoint_report.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/parameters.hpp"
#include "xlstm/core/quantize.hpp"
#include "xlstm/io/checkpoint_report.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/file_path.hpp"
#include "xlstm/io/safetensors.hpp"
#include "xlstm/io/shard_index.hpp"
#include "xlstm/model/language_model.hpp"

namespace xlstm::io {

struct LoadOptions {
  /// Prefix of the module's keys in the file (e.g. "xlstm_block_stack." or "model.").
  std::string prefix;
  /// Tensors under `prefix` that the module does not have are an error unless set.
  bool allow_unexpected = false;
  /// Reject NaN or infinite weights.
  bool check_finite = false;
  /// Keep BF16/F16 weight matrices (Linear layers, embedding, LM head) 16-bit
  /// in memory: views into the memory-mapped file, or a 16-bit copy when a
  /// tensor is not 2-byte aligned. Other tensors are converted to Scalar.
  bool keep_half_weights = false;
  /// Quantise weight matrices while loading (math §16.3): int8_rows or
  /// q4_g32 quantises every weight matrix that quantize_weights' rule selects
  /// (by its name in the file, `quantize_options`) straight from the file's
  /// float or 16-bit values, one row at a time, and drops the file's pages
  /// of it from memory afterwards: never a float copy of the model, nor of
  /// one matrix. The same values as loading, then quantize_weights. Native
  /// (the default) loads the weights as stored. Quantised tensors in the file
  /// load as they are either way.
  WeightStorage quantize = WeightStorage::native;
  QuantizeOptions quantize_options{};
};

/// One tensor of a checkpoint and where its values go: the references whose
/// storage, joined along the first dimension, makes the tensor (one, the
/// slices of a state tensor, or the parts of a fused projection).
template <typename Ref>
struct TensorTarget {
  std::string name;  ///< name in the file, without the load prefix
  Shape shape;       ///< the whole tensor's shape
  std::vector<Ref> parts;

  bool optional() const {
    return std::all_of(parts.begin(), parts.end(), [](const Ref& r) { return r.optional; });
  }
  bool all_matrices() const {
    return std::all_of(parts.begin(), parts.end(), [](const Ref& r) { return r.is_matrix(); });
  }
};

/// Groups visited references into file tensors: slices of one tensor join in
/// order, every other reference is a tensor of its own.
template <typename Ref>
std::vector<TensorTarget<Ref>> tensor_targets(const std::vector<Ref>& refs) {
  std::vector<TensorTarget<Ref>> targets;
  for (const Ref& ref : refs) {
    if (ref.part > 0 && !targets.empty() && targets.back().name == ref.name) {
      targets.back().parts.push_back(ref);
    } else {
      targets.push_back(TensorTarget<Ref>{ref.name, ref.shape, {ref}});
    }
  }
  return targets;
}

namespace detail {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Elements of one part of a target.
template <typename Ref>
std::size_t part_size(const Ref& ref) {
  return ref.parts > 1 ? ref.slice_size() : ref.size();
}

/// sLSTM checkpoints saved by the CUDA backend store `_recurrent_kernel_` as
/// (NH, DH, 4DH) and `_bias_` head-major [h][g][j]; the vanilla layout (ours)
/// is (NH, 4DH, DH) and gate-major [g][h][j] (math §2.2). The kernel's shape
/// tells the layouts apart (4DH != DH), and the bias must follow the kernel:
/// both shapes are the same, so a wrong guess would scramble it silently.
template <typename Scalar>
bool convert_cuda_slstm_layout(const Shape& expected, const Shape& found,
                               std::vector<Scalar>& kernel, std::vector<Scalar>* bias) {
  if (expected.size() != 3 || found.size() != 3) return false;
  const std::size_t nh = expected[0], four_dh = expected[1], dh = expected[2];
  if (four_dh != 4 * dh || found != Shape{nh, dh, four_dh} || four_dh == dh) return false;
  std::vector<Scalar> vanilla(kernel.size());
  for (std::size_t h = 0; h < nh; ++h)
    for (std::size_t i = 0; i < dh; ++i)
      for (std::size_t o = 0; o < four_dh; ++o)
        vanilla[(h * four_dh + o) * dh + i] = kernel[(h * dh + i) * four_dh + o];
  kernel.swap(vanilla);
  if (bias && bias->size() == nh * four_dh) {
    std::vector<Scalar> gate_major(bias->size());
    const std::size_t hidden = nh * dh;
    for (std::size_t h = 0; h < nh; ++h)
      for (std::size_t g = 0; g < 4; ++g)
        for (std::size_t j = 0; j < dh; ++j)
          gate_major[g * hidden + h * dh + j] = (*bias)[h * four_dh + g * dh + j];
    bias->swap(gate_major);
  }
  return true;
}

inline bool is_float_dtype(DType dt) {
  return dt == DType::F32 || dt == DType::F64 || dt == DType::BF16 || dt == DType::F16;
}

/// A target's values while a load is checked: Scalar values, or a weight
/// matrix that keeps the file's storage (16-bit or quantised).
template <typename Scalar>
struct Staged {
  std::vector<Scalar> values;
  WeightMatrix<Scalar> kept;
  bool is_kept = false;
};

/// math §16.4: a quantised weight matrix `<name>` is stored as its values
/// (I8 [out, in] for int8_rows; U8 [out, in/2] for q4_g32, low nibble = even
/// column), its scales `<name>.scales` (F32 [out] or [out, in/32]), and the
/// metadata entries "xlstm.quantized.<name>" = the format's name and, with
/// any q4_g32 tensor, "xlstm.q4_group_size" = "32".
inline const std::string kQuantizedMetadataPrefix = "xlstm.quantized.";
inline const std::string kQuantizedScalesSuffix = ".scales";
inline const std::string kQ4GroupSizeMetadata = "xlstm.q4_group_size";

/// The quantised format `file`'s metadata gives tensor `key`, or null.
inline const std::string* quantized_format_name(const SafetensorsFile& file,
                                                const std::string& key) {
  const auto& metadata = file.metadata();
  const auto found = metadata.find(kQuantizedMetadataPrefix + key);
  return found == metadata.end() ? nullptr : &found->second;
}

/// What a view into quantised tensors keeps alive: the files, and the scales
/// when they had to be copied (not aligned for float in the file).
struct QuantizedOwner {
  std::shared_ptr<const SafetensorsFile> values_file, scales_file;
  std::vector<float> row_scales;  // aligned copies, when the file's are not
  std::vector<std::uint16_t> group_scales;
};

/// Stages the quantised tensor `key` (format `format_name`) for `target` as
/// a view into the file (math §16.4); reports why and returns false when the
/// format, the dtypes, the shapes, the group size or the scales do not fit.
/// The scales are always checked: finite and >= 0.
template <typename Scalar, typename Target>
bool stage_quantized(const CheckpointFiles& files, const std::string& key,
                     const std::string& format_name, const Target& target, CheckpointReport& report,
                     std::set<std::string>& used, Staged<Scalar>& s) {
  const std::string scales_key = key + kQuantizedScalesSuffix;
  if (files.contains(scales_key)) used.insert(scales_key);  // reported with `key`, not apart
  WeightStorage format;
  if (format_name == storage_name(WeightStorage::int8_rows)) {
    format = WeightStorage::int8_rows;
  } else if (format_name == storage_name(WeightStorage::q4_g32)) {
    format = WeightStorage::q4_g32;
  } else {
    report.unusable(key, "unknown quantisation format '" + format_name +
                             "' in the metadata (this library reads int8_rows and q4_g32)");
    return false;
  }
  if (!target.all_matrices() || target.shape.size() != 2) {
    report.unusable(key, "quantised in the file, but the module's tensor " +
                             shape_string(target.shape) + " is not a weight matrix");
    return false;
  }
  const bool q4 = format == WeightStorage::q4_g32;
  const std::size_t rows = target.shape[0], cols = target.shape[1];
  const std::size_t group = std::size_t(kernels::kQ4Group);
  const SafetensorsFile& file = files.file_of(key);
  if (q4) {
    if (cols % group != 0) {
      report.unusable(key, "q4_g32 needs the input dimension to be a multiple of " +
                               std::to_string(group) + ", the module's tensor is " +
                               shape_string(target.shape));
      return false;
    }
    const auto found = file.metadata().find(kQ4GroupSizeMetadata);
    const std::string size = found == file.metadata().end() ? "(none)" : found->second;
    if (size != std::to_string(group)) {
      report.unusable(key, "q4_g32 group size " + size + " in the metadata ('" +
                               kQ4GroupSizeMetadata + "'); this library reads " +
                               std::to_string(group));
      return false;
    }
  }
  bool ok = true;
  const TensorInfo& info = file.info(key);
  const DType values_dtype = q4 ? DType::U8 : DType::I8;
  const Shape values_shape = {rows, q4 ? cols / 2 : cols};
  if (info.dtype != values_dtype) {
    report.unusable(key, format_name + " values must be " + dtype_name(values_dtype) +
                             ", the file has " + dtype_name(info.dtype));
    ok = false;
  } else if (info.shape != values_shape) {
    report.misshaped(key, values_shape, info.shape);
    ok = false;
  }
  const Shape scales_shape = q4 ? Shape{rows, cols / group} : Shape{rows};
  if (!files.contains(scales_key)) {
    report.missing(scales_key, scales_shape);
    return false;
  }
  const SafetensorsFile& scales_file = files.file_of(scales_key);
  const TensorInfo& scales_info = scales_file.info(scales_key);
  // int8_rows: a float per row; q4_g32: a bfloat16 per group (math §16.4).
  const DType scales_dtype = q4 ? DType::BF16 : DType::F32;
  if (scales_info.dtype != scales_dtype) {
    report.unusable(scales_key, format_name + " scales must be " + dtype_name(scales_dtype) +
                                    ", the file has " + dtype_name(scales_info.dtype));
    return false;
  }
  if (scales_info.shape != scales_shape) {
    report.misshaped(scales_key, scales_shape, scales_info.shape);
    return false;
  }
  if (!ok) return false;
  auto owner = std::make_shared<QuantizedOwner>();
  owner->values_file = std::make_shared<SafetensorsFile>(file);
  owner->scales_file = std::make_shared<SafetensorsFile>(scales_file);
  const std::uint8_t* scale_bytes = owner->scales_file->bytes(scales_key);
  const std::size_t count = shape_product(scales_shape);
  const float* row_scales = nullptr;
  const std::uint16_t* group_scales = nullptr;
  // Views into the file when it aligns them (this library's writer does),
  // else aligned copies of the bytes.
  if (q4) {
    group_scales = reinterpret_cast<const std::uint16_t*>(scale_bytes);
    if (reinterpret_cast<std::uintptr_t>(scale_bytes) % alignof(std::uint16_t) != 0) {
      owner->group_scales.resize(count);
      std::memcpy(owner->group_scales.data(), scale_bytes, count * sizeof(std::uint16_t));
      group_scales = owner->group_scales.data();
    }
  } else {
    row_scales = reinterpret_cast<const float*>(scale_bytes);
    if (reinterpret_cast<std::uintptr_t>(scale_bytes) % alignof(float) != 0) {
      owner->row_scales = owner->scales_file->read<float>(scales_key);
      row_scales = owner->row_scales.data();
    }
  }
  for (std::size_t i = 0; i < count; ++i) {
    const float scale = q4 ? bf16_to_float(group_scales[i]) : row_scales[i];
    if (!std::isfinite(scale) || scale < 0.0f) {
      report.unusable(scales_key, "scale " + std::to_string(i) + " is " + std::to_string(scale) +
                                      " (scales are finite and >= 0)");
      return false;
    }
  }
  const std::uint8_t* values = owner->values_file->bytes(key);
  s.kept = q4 ? WeightMatrix<Scalar>::q4_view(values, group_scales, Index(rows), Index(cols),
                                              std::move(owner))
              : WeightMatrix<Scalar>::int8_view(values, row_scales, Index(rows), Index(cols),
                                                std::move(owner));
  s.is_kept = true;
  return true;
}

/// The 16-bit tensor `name` of `file` as a weight matrix of `rows` rows: a
/// view into the mapped file when aligned, else an aligned 16-bit copy.
template <typename Scalar>
WeightMatrix<Scalar> half_weights(const SafetensorsFile& file, const std::string& name, Index rows,
                                  Index cols) {
  const DType dt = file.info(name).dtype;
  const WeightStorage storage = dt == DType::BF16 ? WeightStorage::bf16 : WeightStorage::f16;
  const std::uint8_t* bytes = file.bytes(name);
  if (reinterpret_cast<std::uintptr_t>(bytes) % alignof(std::uint16_t) == 0) {
    return WeightMatrix<Scalar>::half_view(storage, reinterpret_cast<const std::uint16_t*>(bytes),
                                           rows, cols, std::make_shared<SafetensorsFile>(file));
  }
  WeightMatrix<Scalar> copy = WeightMatrix<Scalar>::half_zeros(storage, rows, cols);
  std::memcpy(copy.owned_half_bits(), bytes, std::size_t(rows * cols) * 2);
  return copy;
}

}  // namespace detail

namespace detail {

/// Whether the loader quantises `target` (a 2-D weight matrix of the shape
/// the file has): options.quantize asks for it and quantize_weights' rule
/// selects it by its name in the file and by the module's matrices it fills.
/// A fused tensor (e.g. xLSTM-Large's ifgate_preact, the two gates) is
/// quantised only if the rule selects every one of its matrices, as
/// quantize_weights decides matrix by matrix.
template <typename Target>
bool quantize_on_load(const LoadOptions& options, const std::string& key, const Target& target) {
  if (options.quantize == WeightStorage::native) return false;
  check(options.quantize == WeightStorage::int8_rows || options.quantize == WeightStorage::q4_g32,
        "LoadOptions::quantize must be native, int8_rows or q4_g32, got ",
        storage_name(options.quantize));
  if (kept_by_name(key, options.quantize_options)) return false;
  return std::all_of(target.parts.begin(), target.parts.end(), [&](const auto& part) {
    return quantizable_shape(part.matrix->rows(), part.matrix->cols(), options.quantize,
                             options.quantize_options);
  });
}

/// The float or 16-bit tensor `key` of `file` (rows x cols) quantised to
/// `format` a row at a time (WeightMatrix::quantized_rows), then its pages
/// released from memory. Throws Error on a non-finite weight.
template <typename Scalar>
WeightMatrix<Scalar> quantized_from_file(const SafetensorsFile& file, const std::string& key,
                                         Index rows, Index cols, WeightStorage format) {
  const DType dtype = file.info(key).dtype;
  const std::uint8_t* bytes = file.bytes(key);
  const std::size_t row_bytes = std::size_t(cols) * dtype_size(dtype);
  const std::string context = file.name() + ": tensor '" + key + "'";
  WeightMatrix<Scalar> w = WeightMatrix<Scalar>::quantized_rows(
      format, rows, cols,
      [&](Index r, float* out) {
        decode_elements(dtype, bytes + std::size_t(r) * row_bytes, out, std::size_t(cols), context);
      },
      context.c_str());
  file.release(key);
  return w;
}

}  // namespace detail

/// Loads `targets` from `files` (names prefixed by options.prefix),
/// converting F32/F64/BF16/F16 to Scalar. Throws one Error (headed by
/// `what`) listing every problem; on error nothing is written.
template <typename Scalar>
void load_targets(const std::vector<TensorTarget<ParameterRef<Scalar>>>& targets,
                  const CheckpointFiles& files, const LoadOptions& options,
                  const std::string& what) {
  CheckpointReport report;
  std::map<std::string, detail::Staged<Scalar>> staged;
  std::set<std::string> used;
  const std::string& prefix = options.prefix;

  for (const auto& target : targets) {
    const std::string key = prefix + target.name;
    if (!files.contains(key)) {
      if (!target.optional()) report.missing(key, target.shape);
      continue;
    }
    used.insert(key);
    const SafetensorsFile& file = files.file_of(key);
    const TensorInfo& info = file.info(key);
    if (const std::string* format = detail::quantized_format_name(file, key)) {
      detail::Staged<Scalar> s;
      if (detail::stage_quantized(files, key, *format, target, report, used, s) &&
          !staged.count(key)) {
        staged[key] = std::move(s);
      }
      continue;
    }
    if (!detail::is_float_dtype(info.dtype)) {
      report.bad_dtype(key, dtype_name(info.dtype));
      continue;
    }
    Shape found = info.shape;
    // multihead_norm.weight may be stored as (NH, DH) (math §7.2): flatten.
    if (found.size() == 2 && target.shape.size() == 1 && found[0] * found[1] == target.shape[0] &&
        target.name.find("multihead_norm") != std::string::npos) {
      found = target.shape;
    }
    detail::Staged<Scalar> s;
    const bool half_file = info.dtype == DType::BF16 || info.dtype == DType::F16;
    const bool matrix = found == target.shape && target.all_matrices() && target.shape.size() == 2;
    if (matrix && detail::quantize_on_load(options, key, target)) {
      try {
        s.kept = detail::quantized_from_file<Scalar>(file, key, Index(target.shape[0]),
                                                     Index(target.shape[1]), options.quantize);
      } catch (const Error& e) {
        report.unusable(key, e.what());  // a non-finite weight or one beyond float's range
        continue;
      }
      s.is_kept = true;
    } else if (matrix && options.keep_half_weights && half_file) {
      s.kept =
          detail::half_weights<Scalar>(file, key, Index(target.shape[0]), Index(target.shape[1]));
      s.is_kept = true;
      if (options.check_finite) s.values = file.read<Scalar>(key);  // checked below, then dropped
    } else {
      s.values = file.read<Scalar>(key);
    }
    // Official checkpoint quirk (math §2.2): sLSTM tensors in the CUDA layout.
    if (found != target.shape && detail::ends_with(target.name, "_recurrent_kernel_")) {
      const std::string bias_name =
          target.name.substr(0, target.name.size() - std::string("_recurrent_kernel_").size()) +
          "_bias_";
      auto bias = staged.find(prefix + bias_name);
      std::vector<Scalar> bias_values;
      if (bias == staged.end() && files.contains(prefix + bias_name) &&
          detail::is_float_dtype(
              files.file_of(prefix + bias_name).info(prefix + bias_name).dtype)) {
        // The bias comes after the kernel in the module's order: stage it now,
        // converted with the kernel, so that it is not converted twice.
        bias_values = files.file_of(prefix + bias_name).read<Scalar>(prefix + bias_name);
      }
      std::vector<Scalar>* bias_ptr = bias != staged.end()  ? &bias->second.values
                                      : bias_values.empty() ? nullptr
                                                            : &bias_values;
      if (detail::convert_cuda_slstm_layout(target.shape, found, s.values, bias_ptr)) {
        found = target.shape;
        if (!bias_values.empty()) staged[prefix + bias_name].values = std::move(bias_values);
      }
    }
    if (found != target.shape) {
      report.misshaped(key, target.shape, found);
      continue;
    }
    if (options.check_finite &&
        !std::all_of(s.values.begin(), s.values.end(), [](Scalar x) { return std::isfinite(x); })) {
      report.non_finite(key);
    }
    if (s.is_kept) s.values = {};
    if (!staged.count(key)) staged[key] = std::move(s);
  }

  if (!options.allow_unexpected) {
    for (const auto& name : files.names()) {
      if (name.rfind(prefix, 0) == 0 && !used.count(name)) report.unexpected(name);
    }
  }
  std::string header = what;
  if (!prefix.empty()) header += " (key prefix '" + prefix + "')";
  report.throw_if_problems(header);

  for (const auto& target : targets) {
    auto it = staged.find(prefix + target.name);
    if (it == staged.end()) continue;  // an optional tensor the file leaves out
    const detail::Staged<Scalar>& s = it->second;
    std::size_t offset = 0;  // in elements
    Index row = 0;           // in matrix rows
    for (const auto& part : target.parts) {
      const std::size_t n = detail::part_size(part);
      if (part.matrix) {
        const Index rows = part.matrix->rows(), cols = part.matrix->cols();
        if (s.is_kept) {
          *part.matrix = target.parts.size() == 1 ? s.kept : s.kept.row_range(row, rows);
        } else {
          *part.matrix = WeightMatrix<Scalar>(
              Matrix<Scalar>(ConstMatrixMap<Scalar>(s.values.data() + offset, rows, cols)));
        }
        row += rows;
      } else {
        std::copy(s.values.begin() + std::ptrdiff_t(offset),
                  s.values.begin() + std::ptrdiff_t(offset + n), part.data);
      }
      offset += n;
    }
  }
}

namespace detail {

/// The quantised format of `target` (all its parts quantised alike, a 2-D
/// weight matrix), native if no part is quantised; throws for a mix.
template <typename Target>
WeightStorage quantized_format_of(const Target& target) {
  WeightStorage format = WeightStorage::native;
  bool any = false, all = true;
  for (const auto& part : target.parts) {
    const bool quantized = part.matrix && part.matrix->is_quantized();
    any = any || quantized;
    all = all && quantized;
    if (quantized) {
      if (format != WeightStorage::native && format != part.matrix->storage()) all = false;
      format = part.matrix->storage();
    }
  }
  if (!any) return WeightStorage::native;
  check(all && target.shape.size() == 2, "saving tensor '", target.name,
        "': its parts are stored differently (some quantised, some not, or in two formats); ",
        "quantise them alike to save them");
  return format;
}

}  // namespace detail

/// How add_targets hands tensors to the writer.
enum class WriteMode {
  copy,  ///< copied (and converted) now: the module may change or go afterwards
  /// read from the module when the file is written, a row at a time: no copy
  /// of the model is held (a 7B model saves within its own memory), but the
  /// module must stay unchanged until the writer's save().
  by_reference,
};

namespace detail {

/// The bytes of `target` (any storage but quantised) as `dtype`, handed to
/// `sink` a row (or a chunk of a vector) at a time.
template <typename Scalar>
void produce_target(const TensorTarget<ConstParameterRef<Scalar>>& target, DType dtype,
                    const SafetensorsWriter::ByteSink& sink) {
  const std::string where = "tensor '" + target.name + "'";
  std::vector<Scalar> values;
  std::vector<std::uint8_t> bytes;
  auto send = [&](const Scalar* data, std::size_t count) {
    bytes.resize(count * dtype_size(dtype));
    encode_elements(data, dtype, bytes.data(), count, where);
    sink(bytes.data(), bytes.size());
  };
  for (const auto& part : target.parts) {
    if (part.data) {
      const std::size_t n = part_size(part), chunk = std::size_t(1) << 16;
      for (std::size_t i = 0; i < n; i += chunk) send(part.data + i, std::min(chunk, n - i));
    } else {  // 16-bit weights, decoded row by row
      const Index cols = part.matrix->cols();
      values.resize(std::size_t(cols));
      for (Index r = 0; r < part.matrix->rows(); ++r) {
        part.matrix->copy_row(r, VectorMap<Scalar>(values.data(), cols));
        send(values.data(), values.size());
      }
    }
  }
}

/// The dtype a target is written in by default: that of its 16-bit
/// weights when every part is a matrix of the same 16-bit storage (saving
/// keeps them exact and 16-bit), else Scalar's.
template <typename Scalar>
DType stored_dtype(const TensorTarget<ConstParameterRef<Scalar>>& target) {
  const WeightMatrix<Scalar>* first = target.parts.front().matrix;
  const bool half = first && first->is_half() &&
                    std::all_of(target.parts.begin(), target.parts.end(), [&](const auto& part) {
                      return part.matrix && part.matrix->storage() == first->storage();
                    });
  if (!half) return dtype_of<Scalar>();
  return first->storage() == WeightStorage::bf16 ? DType::BF16 : DType::F16;
}

/// Adds a tensor whose bytes `produce` hands out: streamed when the file is
/// written (by_reference), or collected now and copied in (copy).
inline void add_produced(SafetensorsWriter& writer, const std::string& name, DType dtype,
                         const Shape& shape, SafetensorsWriter::Producer produce, WriteMode mode) {
  if (mode == WriteMode::by_reference) {
    writer.add_streamed(name, dtype, shape, std::move(produce));
    return;
  }
  std::vector<std::uint8_t> bytes;
  produce([&](const std::uint8_t* data, std::size_t count) {
    bytes.insert(bytes.end(), data, data + count);
  });
  writer.add_raw(name, dtype, shape, bytes.data(), bytes.size());
}

/// Adds the quantised tensor `target` (math §16.4): values, scales, metadata.
template <typename Target>
void add_quantized(SafetensorsWriter& writer, const Target& target, WeightStorage format,
                   WriteMode mode) {
  const bool q4 = format == WeightStorage::q4_g32;
  const std::size_t rows = target.shape[0], cols = target.shape[1];
  const std::size_t group = std::size_t(kernels::kQ4Group);
  add_produced(
      writer, target.name, q4 ? DType::U8 : DType::I8, {rows, q4 ? cols / 2 : cols},
      [target, format](const SafetensorsWriter::ByteSink& sink) {
        for (const auto& part : target.parts) {
          const auto& m = *part.matrix;
          sink(m.quantized_values(),
               WeightMatrix<float>::quantized_value_bytes(format, m.rows(), m.cols()));
        }
      },
      mode);
  add_produced(
      writer, target.name + kQuantizedScalesSuffix, q4 ? DType::BF16 : DType::F32,
      q4 ? Shape{rows, cols / group} : Shape{rows},
      [target, format](const SafetensorsWriter::ByteSink& sink) {
        std::vector<std::uint8_t> bytes;
        for (const auto& part : target.parts) {
          const auto& m = *part.matrix;
          const std::size_t k =
              WeightMatrix<float>::quantized_scale_count(format, m.rows(), m.cols());
          if (format == WeightStorage::q4_g32) {  // bfloat16 bits, as stored
            sink(reinterpret_cast<const std::uint8_t*>(m.group_scales()), k * 2);
            continue;
          }
          bytes.resize(k * sizeof(float));
          encode_elements(m.row_scales(), DType::F32, bytes.data(), k, target.name);
          sink(bytes.data(), bytes.size());
        }
      },
      mode);
  writer.set_metadata(kQuantizedMetadataPrefix + target.name, storage_name(format));
  if (q4) writer.set_metadata(kQ4GroupSizeMetadata, std::to_string(group));
}

}  // namespace detail

/// Adds `targets` to `writer`, in Scalar (16-bit weight matrices in their
/// own dtype), or weight matrices converted to `matrix_dtype` when given
/// (e.g. BF16). Quantised weight matrices keep
/// their format (values, scales and metadata, math §16.4). `mode` says
/// whether the bytes are copied now or read when the file is written.
template <typename Scalar>
void add_targets(SafetensorsWriter& writer,
                 const std::vector<TensorTarget<ConstParameterRef<Scalar>>>& targets,
                 std::optional<DType> matrix_dtype = std::nullopt,
                 WriteMode mode = WriteMode::copy) {
  // Every target's storage is checked before anything is added.
  std::vector<WeightStorage> formats;
  formats.reserve(targets.size());
  for (const auto& target : targets) formats.push_back(detail::quantized_format_of(target));
  for (std::size_t t = 0; t < targets.size(); ++t) {
    const auto& target = targets[t];
    if (formats[t] != WeightStorage::native) {
      detail::add_quantized(writer, target, formats[t], mode);
      continue;
    }
    const DType dtype =
        matrix_dtype && target.all_matrices() ? *matrix_dtype : detail::stored_dtype(target);
    detail::add_produced(
        writer, target.name, dtype, target.shape,
        [target, dtype](const SafetensorsWriter::ByteSink& sink) {
          detail::produce_target(target, dtype, sink);
        },
        mode);
  }
}

/// Loads `params` (e.g. parameter_list(module)) from `file`. Throws Error
/// listing every problem; on error nothing is written.
template <typename Scalar>
void load_parameters(const ParameterList<Scalar>& params, const SafetensorsFile& file,
                     const LoadOptions& options = {}) {
  load_targets(tensor_targets(params), CheckpointFiles::from_file(file), options,
               file.name() + ": checkpoint does not match the module");
}

namespace detail {
template <typename Module, typename = void>
struct HasPrepareKernels : std::false_type {};
template <typename Module>
struct HasPrepareKernels<Module, std::void_t<decltype(std::declval<Module&>().prepare_kernels())>>
    : std::true_type {};
}  // namespace detail

/// Loads a module's parameters (any module with for_each_parameter) from a
/// file or the shards of a checkpoint, then calls the module's
/// prepare_kernels() where it has one (the sLSTM cells' packed R,
/// SLstmCell::prepare_kernels). Bind an optimiser (TrainableParameters)
/// after loading, never before: it points into the storage a load replaces.
template <typename Module>
void load_module(Module& module, const CheckpointFiles& files, const LoadOptions& options = {}) {
  load_targets(tensor_targets(parameter_list(module)), files, options,
               files.path() + ": checkpoint does not match the module");
  if constexpr (detail::HasPrepareKernels<Module>::value) module.prepare_kernels();
}
template <typename Module>
void load_module(Module& module, const SafetensorsFile& file, const LoadOptions& options = {}) {
  load_module(module, CheckpointFiles::from_file(file), options);
}

/// Adds a module's parameters to `writer` under `prefix`, in the module's
/// Scalar type (16-bit weights decoded), or weight matrices as `matrix_dtype`.
template <typename Module>
void add_module(SafetensorsWriter& writer, const Module& module, const std::string& prefix = "",
                std::optional<DType> matrix_dtype = std::nullopt) {
  add_targets(writer, tensor_targets(parameter_list(module, prefix)), matrix_dtype);
}

/// Saves a module's parameters as a safetensors file with official names.
template <typename Module>
void save_module(const Module& module, const std::string& path, const std::string& prefix = "") {
  SafetensorsWriter writer;
  // Written straight from the module, so saving holds no second copy.
  add_targets(writer, tensor_targets(parameter_list(module, prefix)), std::nullopt,
              WriteMode::by_reference);
  writer.save(path);
}

/// Loads a NeurIPS language model directory in one call: `config.json` (the
/// official xLSTMLMModelConfig) and `model.safetensors` (or shards with
/// model.safetensors.index.json) with the official state_dict names. A path
/// to a .safetensors file reads the config.json beside it.
template <typename Scalar>
LanguageModel<Scalar> load_language_model(const std::string& path,
                                          const LoadOptions& options = {}) {
  namespace fs = std::filesystem;
  const fs::path native = detail::utf8_path(path);
  const fs::path dir = fs::is_directory(native) ? native : native.parent_path();
  const fs::path config_path = dir / "config.json";
  check(fs::exists(config_path), "load_language_model: '", path,
        "' has no config.json beside its weights");
  LanguageModel<Scalar> model(
      language_model_config_from_json(read_json_file(detail::utf8_string(config_path))),
      uninitialized);
  load_module(model, CheckpointFiles::open(path), options);
  return model;
}

}  // namespace xlstm::io
