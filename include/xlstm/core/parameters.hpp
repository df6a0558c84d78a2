// Named parameters: how a module tells loaders and savers what it holds.
//
// Every module has `collect_parameters(prefix, list)`, which appends one entry
// per tensor it owns under its official PyTorch state_dict name and shape,
// pointing at the module's own storage (row-major, the PyTorch layout). The
// checkpoint code in io/ reads and writes through these entries, so names live
// in exactly one place: the module.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"

namespace xlstm {

template <typename Scalar>
struct ParameterRef {
  std::string name;  ///< full state_dict key
  Shape shape;       ///< PyTorch shape
  Scalar* data;      ///< the module's storage, shape product elements, row-major
};

template <typename Scalar>
using ParameterList = std::vector<ParameterRef<Scalar>>;

inline std::size_t shape_product(const Shape& shape) {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;
  return n;
}

/// Appends `storage` (any dense Eigen object, row-major data) as `prefix + name`.
template <typename Scalar, typename Derived>
void add_parameter(ParameterList<Scalar>& list, const std::string& prefix, const std::string& name,
                   Shape shape, Eigen::PlainObjectBase<Derived>& storage) {
  check(shape_product(shape) == static_cast<std::size_t>(storage.size()),
        "add_parameter: '", prefix + name, "' has ", storage.size(),
        " elements but its shape needs ", shape_product(shape));
  list.push_back(ParameterRef<Scalar>{prefix + name, std::move(shape), storage.data()});
}

}  // namespace xlstm
