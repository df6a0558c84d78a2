// Named parameters: how a module tells loaders, savers and optimisers what it
// holds.
//
// Every module has `for_each_parameter(visit, prefix)`, const and non-const.
// It calls `visit` once per tensor it owns, with a reference that carries the
// tensor's official PyTorch state_dict name and shape and points at the
// module's own storage (row-major, the PyTorch layout). A non-const module
// hands out `ParameterRef`s (writable), a const one `ConstParameterRef`s, so
// saving needs no cast. Names live in the module and nowhere else; io/ only
// translates them to a file's naming scheme.
//
//   xlstm::MLstmBlock<float> block(config);
//   block.for_each_parameter([](const xlstm::ParameterRef<float>& p) {
//     std::cout << p.name << " " << xlstm::shape_string(p.shape) << "\n";
//   });
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/weight_matrix.hpp"

namespace xlstm {

inline std::size_t shape_product(const Shape& shape) {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;
  return n;
}

/// One parameter of a module. It is either dense Scalar storage (`data`) or a
/// weight matrix (`matrix`, which may hold 16-bit or quantised values); a weight matrix in
/// Scalar storage has both set, so code that only handles Scalar values can
/// use `data` alone. `kConst` makes every pointer read-only.
template <typename Scalar, bool kConst>
struct BasicParameterRef {
  using Value = std::conditional_t<kConst, const Scalar, Scalar>;
  using Weights = std::conditional_t<kConst, const WeightMatrix<Scalar>, WeightMatrix<Scalar>>;

  BasicParameterRef() = default;
  /// A writable reference reads as a read-only one, so a visitor written for
  /// ConstParameterRef works on a non-const module too.
  template <bool kOther, typename = std::enable_if_t<kConst && !kOther>>
  BasicParameterRef(const BasicParameterRef<Scalar, kOther>& other)  // NOLINT: implicit on purpose
      : name(other.name),
        shape(other.shape),
        data(other.data),
        matrix(other.matrix),
        optional(other.optional),
        part(other.part),
        parts(other.parts) {}

  std::string name;           ///< full state_dict key
  Shape shape;                ///< PyTorch shape
  Value* data = nullptr;      ///< shape product elements, row-major; null unless Scalar storage
  Weights* matrix = nullptr;  ///< set when the parameter is a WeightMatrix
  /// A checkpoint may leave it out: it shares storage with a parameter listed
  /// before it (the tied LM head), so loading that one fills it too.
  bool optional = false;
  /// This storage is slice `part` of `parts` equal slices, along the first
  /// dimension, of the tensor `name` (e.g. the y, c, n, m matrices of an
  /// sLSTM state, saved as one (4, B, H) tensor). Savers and loaders join
  /// and split the slices.
  std::size_t part = 0, parts = 1;

  /// Elements of the whole tensor, and of this slice.
  std::size_t size() const { return shape_product(shape); }
  std::size_t slice_size() const { return size() / parts; }
  bool is_matrix() const { return matrix != nullptr; }
};

template <typename Scalar>
using ParameterRef = BasicParameterRef<Scalar, false>;
template <typename Scalar>
using ConstParameterRef = BasicParameterRef<Scalar, true>;
template <typename Scalar>
using ParameterList = std::vector<ParameterRef<Scalar>>;
template <typename Scalar>
using ConstParameterList = std::vector<ConstParameterRef<Scalar>>;

namespace detail {

template <typename Scalar, bool kConst, typename Storage>
BasicParameterRef<Scalar, kConst> dense_ref(std::string name, Shape shape, Storage& storage) {
  check(shape_product(shape) == static_cast<std::size_t>(storage.size()), "tensor '", name,
        "' has ", storage.size(), " elements but its shape needs ", shape_product(shape));
  BasicParameterRef<Scalar, kConst> ref;
  ref.name = std::move(name);
  ref.shape = std::move(shape);
  ref.data = storage.data();
  return ref;
}

}  // namespace detail

/// Visits dense storage (any Eigen matrix or vector, const or not) as
/// `prefix + name`; the reference is writable exactly when `storage` is.
template <typename Visit, typename Storage,
          typename = std::enable_if_t<!std::is_same_v<
              std::remove_const_t<Storage>, WeightMatrix<typename Storage::Scalar>>>>
void visit_parameter(Visit& visit, const std::string& prefix, const char* name, Shape shape,
                     Storage& storage, bool optional = false) {
  using Scalar = typename Storage::Scalar;
  auto ref = detail::dense_ref<Scalar, std::is_const_v<Storage>>(prefix + name, std::move(shape),
                                                                 storage);
  ref.optional = optional;
  visit(ref);
}

/// Visits `slices` (matrices of equal size, writable or all const) as the
/// slices of one tensor `prefix + name` of `shape`, in order.
template <typename Visit, typename... Storage>
void visit_sliced(Visit& visit, const std::string& prefix, const char* name, const Shape& shape,
                  Storage&... slices) {
  using First = std::remove_reference_t<std::tuple_element_t<0, std::tuple<Storage...>>>;
  using Scalar = typename First::Scalar;
  constexpr bool kConst = std::is_const_v<First>;
  std::size_t part = 0;
  auto one = [&](auto& storage) {
    check(shape_product(shape) == sizeof...(Storage) * std::size_t(storage.size()), "tensor '",
          prefix + name, "': ", sizeof...(Storage), " slices of ", storage.size(),
          " elements do not make its shape");
    BasicParameterRef<Scalar, kConst> ref;
    ref.name = prefix + name;
    ref.shape = shape;
    ref.data = storage.data();
    ref.part = part++;
    ref.parts = sizeof...(Storage);
    visit(ref);
  };
  (one(slices), ...);
}

/// Visits a weight matrix (shape rows x cols, const or not) as `prefix + name`.
template <typename Visit, typename Weights,
          typename = std::enable_if_t<std::is_same_v<std::remove_const_t<Weights>,
                                                     WeightMatrix<typename Weights::Scalar>>>>
void visit_parameter(Visit& visit, const std::string& prefix, const char* name, Weights& weights,
                     bool optional = false) {
  BasicParameterRef<typename Weights::Scalar, std::is_const_v<Weights>> ref;
  ref.name = prefix + name;
  ref.shape = {std::size_t(weights.rows()), std::size_t(weights.cols())};
  ref.data = weights.is_native() ? weights.native().data() : nullptr;
  ref.matrix = &weights;
  ref.optional = optional;
  visit(ref);
}

/// Every parameter of `module` as a list (writable for a non-const module).
template <typename Module>
auto parameter_list(Module& module, const std::string& prefix = "") {
  using Ref = BasicParameterRef<typename std::remove_const_t<Module>::Scalar,
                                std::is_const_v<Module>>;
  std::vector<Ref> list;
  module.for_each_parameter([&](const Ref& p) { list.push_back(p); }, prefix);
  return list;
}

/// Every weight matrix of `module` (Linear layers, embeddings, heads), in
/// visiting order, const when the module is: e.g. to fill a model built with
/// 16-bit storage. A tied head (the embedding again) is listed once.
template <typename Module>
auto weight_matrices(Module& module) {
  using Scalar = typename std::remove_const_t<Module>::Scalar;
  using Weights = std::conditional_t<std::is_const_v<Module>, const WeightMatrix<Scalar>,
                                     WeightMatrix<Scalar>>;
  std::vector<Weights*> out;
  module.for_each_parameter([&](const auto& p) {
    if (p.matrix && std::find(out.begin(), out.end(), p.matrix) == out.end()) {
      out.push_back(p.matrix);
    }
  });
  return out;
}

/// Declares `for_each_parameter` (const and non-const) for a module whose
/// parameters a static member `visit_parameters(self, visit, prefix)` lists;
/// `self` is the module with the constness of the call, so one listing serves
/// reading and writing.
#define XLSTM_PARAMETER_VISITOR                                                  \
  template <typename Visit>                                                      \
  void for_each_parameter(Visit&& visit, const std::string& prefix = "") {       \
    visit_parameters(*this, visit, prefix);                                      \
  }                                                                              \
  template <typename Visit>                                                      \
  void for_each_parameter(Visit&& visit, const std::string& prefix = "") const { \
    visit_parameters(*this, visit, prefix);                                      \
  }

/// The same for a state: `for_each_tensor` lists what the state is (the
/// tensors that are copied, saved and compared; never its scratch), through a
/// static member `visit_tensors(self, visit, prefix)`.
#define XLSTM_STATE_VISITOR                                                   \
  template <typename Visit>                                                   \
  void for_each_tensor(Visit&& visit, const std::string& prefix = "") {       \
    visit_tensors(*this, visit, prefix);                                      \
  }                                                                           \
  template <typename Visit>                                                   \
  void for_each_tensor(Visit&& visit, const std::string& prefix = "") const { \
    visit_tensors(*this, visit, prefix);                                      \
  }

}  // namespace xlstm
