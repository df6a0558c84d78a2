// A pickled config (e.g. a Lightning checkpoint's `hyper_parameters`) as JSON, so that the
// config readers of io/config_json.hpp and tirex/config.hpp read it like a config.json.
#pragma once

#include <string>

#include "xlstm/core/error.hpp"
#include "xlstm/io/config_json.hpp"
#include "xlstm/io/torch_pickle.hpp"

namespace xlstm::io {

/// `value` as JSON: None -> null, bool, int, float, str, list and tuple ->
/// array, dict -> object (integer keys written as their decimal text). A
/// tensor is an Error naming `where`: a config holds no tensors.
inline Json pickled_to_json(const PickledValue& value, const std::string& where = "value") {
  using Kind = PickledValue::Kind;
  switch (value.kind()) {
    case Kind::none:
      return nullptr;
    case Kind::boolean:
      return value.as_bool();
    case Kind::integer:
      return value.as_int();
    case Kind::floating:
      return value.as_double();
    case Kind::string:
      return value.as_string();
    case Kind::list:
    case Kind::tuple: {
      Json array = Json::array();
      for (std::size_t i = 0; i < value.items().size(); ++i) {
        array.push_back(pickled_to_json(value.items()[i], where + "[" + std::to_string(i) + "]"));
      }
      return array;
    }
    case Kind::dict: {
      Json object = Json::object();
      for (const PickledValue::Entry& e : value.entries()) {
        check(e.key.is(Kind::string) || e.key.is(Kind::integer), where,
              ": a dict key must be a str or an int, got ", e.key.describe());
        const std::string key =
            e.key.is(Kind::string) ? e.key.as_string() : std::to_string(e.key.as_int());
        object[key] = pickled_to_json(e.value, where + "." + key);
      }
      return object;
    }
    default:
      fail(where, ": a config cannot hold a ", value.describe());
  }
}

}  // namespace xlstm::io
