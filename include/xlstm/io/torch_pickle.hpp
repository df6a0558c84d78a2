// A restricted reader of the pickles torch.save writes (the data.pkl of a
// checkpoint): read_torch_pickle() turns the bytes into a tree of plain values
// (PickledValue: None, bools, integers, floats, strings, lists, tuples, dicts)
// whose tensors refer to TorchTensor records (dtype, shape, strides, storage).
//
// A pickle is a program for a small stack machine, and Python's unpickler runs
// whatever functions it names: loading an untrusted pickle can execute code.
// This reader executes nothing. It implements only the opcodes that a state
// dict and its hyper-parameters need and knows a fixed list of globals, each
// of which it interprets itself (an OrderedDict, a tensor, a storage type);
// any other opcode or global is an Error naming it. Every read is bounds
// checked, the object graph lives in an arena (so self-references cannot leak
// or loop), and the tree it becomes is limited in depth and in size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xlstm/core/error.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/io/dtype.hpp"

namespace xlstm::io {

/// A tensor as the pickle describes it: a strided view of elements of one
/// storage (a file `data/<storage_key>` of the checkpoint archive).
struct TorchTensor {
  std::string storage_key;
  /// From the storage type, e.g. torch.BFloat16Storage -> BF16.
  DType dtype = DType::F32;
  /// Elements of `dtype` the storage holds, as the pickle says.
  std::size_t storage_elements = 0;
  /// In elements from the start of the storage.
  std::size_t storage_offset = 0;
  Shape shape;
  /// In elements, one per dimension.
  std::vector<std::size_t> strides;

  /// Product of the shape (1 for a 0-d tensor, 0 if any dimension is 0).
  std::size_t element_count() const {
    std::size_t count = 0;
    check(detail::checked_element_count(shape, count), "torch tensor: shape ", shape_string(shape),
          " overflows std::size_t");
    return count;
  }
  std::size_t byte_count() const {
    std::size_t bytes = 0;
    check(detail::checked_byte_count(shape, dtype, bytes), "torch tensor: shape ",
          shape_string(shape), " of ", dtype_name(dtype), " overflows std::size_t bytes");
    return bytes;
  }
  /// Whether the elements lie in row-major order without gaps (dimensions of
  /// size 1 may have any stride, as in torch's own test).
  bool is_contiguous() const {
    for (std::size_t size : shape) {
      if (size == 0) return true;  // no elements at all
    }
    std::size_t expected = 1;
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (shape[d] != 1 && strides[d] != expected) return false;
      expected *= shape[d];  // cannot overflow: element_count() is checked when read
    }
    return true;
  }
};

/// A value of the pickled object, in the few forms a checkpoint holds.
/// Dicts keep their insertion order; their keys are strings or integers.
class PickledValue {
 public:
  enum class Kind { none, boolean, integer, floating, string, list, tuple, dict, tensor };
  struct Entry;  // a dict entry: key and value

  PickledValue() = default;  // None
  static PickledValue boolean(bool value) { return scalar(Kind::boolean, value ? 1 : 0, 0); }
  static PickledValue integer(std::int64_t value) { return scalar(Kind::integer, value, 0); }
  static PickledValue floating(double value) { return scalar(Kind::floating, 0, value); }
  static PickledValue string(std::string text) {
    PickledValue v;
    v.kind_ = Kind::string;
    v.text_ = std::move(text);
    return v;
  }
  /// A list or a tuple (`kind`) of `items`.
  static PickledValue sequence(Kind kind, std::vector<PickledValue> items) {
    check(kind == Kind::list || kind == Kind::tuple,
          "PickledValue::sequence: kind must be list or tuple, got ", kind_name(kind));
    PickledValue v;
    v.kind_ = kind;
    v.items_ = std::move(items);
    return v;
  }
  static PickledValue dict(std::vector<Entry> entries);
  /// The tensor `index` of the checkpoint's tensor list.
  static PickledValue tensor(std::size_t index) {
    return scalar(Kind::tensor, static_cast<std::int64_t>(index), 0);
  }

  Kind kind() const { return kind_; }
  static const char* kind_name(Kind kind) {
    static const char* const names[] = {"None", "bool",  "int",  "float", "str",
                                        "list", "tuple", "dict", "tensor"};
    return names[static_cast<int>(kind)];
  }
  bool is(Kind kind) const { return kind_ == kind; }

  bool as_bool() const {
    expect(Kind::boolean);
    return integer_ != 0;
  }
  std::int64_t as_int() const {
    expect(Kind::integer);
    return integer_;
  }
  /// A float, or an integer converted to double.
  double as_double() const {
    if (kind_ == Kind::integer) return static_cast<double>(integer_);
    expect(Kind::floating);
    return floating_;
  }
  const std::string& as_string() const {
    expect(Kind::string);
    return text_;
  }
  /// The items of a list or a tuple.
  const std::vector<PickledValue>& items() const {
    if (kind_ != Kind::list && kind_ != Kind::tuple) {
      fail("PickledValue: expected list or tuple, found ", describe());
    }
    return items_;
  }
  const std::vector<Entry>& entries() const {
    expect(Kind::dict);
    return entries_;
  }
  std::size_t tensor_index() const {
    expect(Kind::tensor);
    return static_cast<std::size_t>(integer_);
  }

  /// The value of dict key `key`, or null if there is no such string key.
  /// Throws if this is not a dict.
  const PickledValue* find(const std::string& key) const;
  /// The value of dict key `key`; throws naming the key and the keys there are.
  const PickledValue& at(const std::string& key) const;

  /// The kind, and the value for scalars, e.g. "int 3" or "str 'abc'".
  std::string describe() const {
    switch (kind_) {
      case Kind::boolean:
        return integer_ ? "bool True" : "bool False";
      case Kind::integer:
        return "int " + std::to_string(integer_);
      case Kind::floating:
        return xlstm::detail::concat("float ", floating_);
      case Kind::string:
        return "str '" + (text_.size() > 40 ? text_.substr(0, 40) + "..." : text_) + "'";
      case Kind::list:
      case Kind::tuple:
        return xlstm::detail::concat(kind_name(kind_), " of ", items_.size(), " items");
      case Kind::dict:
        return xlstm::detail::concat("dict of ", entries_.size(), " entries");
      default:
        return kind_name(kind_);
    }
  }

 private:
  static PickledValue scalar(Kind kind, std::int64_t integer, double floating) {
    PickledValue v;
    v.kind_ = kind;
    v.integer_ = integer;
    v.floating_ = floating;
    return v;
  }
  void expect(Kind kind) const {
    if (kind_ != kind) fail("PickledValue: expected ", kind_name(kind), ", found ", describe());
  }

  Kind kind_ = Kind::none;
  std::int64_t integer_ = 0;  // bool (0/1), int, tensor index
  double floating_ = 0;
  std::string text_;
  std::vector<PickledValue> items_;
  std::vector<Entry> entries_;
};

struct PickledValue::Entry {
  PickledValue key, value;
};

inline PickledValue PickledValue::dict(std::vector<Entry> entries) {
  PickledValue v;
  v.kind_ = Kind::dict;
  v.entries_ = std::move(entries);
  return v;
}

inline const PickledValue* PickledValue::find(const std::string& key) const {
  for (const Entry& entry : entries()) {
    if (entry.key.kind_ == Kind::string && entry.key.text_ == key) return &entry.value;
  }
  return nullptr;
}

inline const PickledValue& PickledValue::at(const std::string& key) const {
  if (const PickledValue* value = find(key)) return *value;
  std::string keys;
  for (const Entry& entry : entries_) {
    if (keys.size() > 200) {
      keys += ", ...";
      break;
    }
    keys += (keys.empty() ? "" : ", ") + entry.key.describe();
  }
  fail("PickledValue: no key '", key, "' in the dict (its keys: ", keys.empty() ? "none" : keys,
       ")");
}

/// What read_torch_pickle() found: the pickled object and its tensors, which
/// PickledValue::tensor_index() indexes.
struct TorchPickle {
  PickledValue root;
  std::vector<TorchTensor> tensors;
};

namespace detail {

/// Limits that keep a hostile pickle from costing unbounded memory or time.
/// Real checkpoints are far inside them (a state dict nests 2 or 3 levels).
struct PickleLimits {
  /// Nesting of containers in the result (also catches self-references).
  static constexpr std::size_t max_depth = 64;
  /// Objects the stack machine may create; each opcode creates at most one.
  static constexpr std::size_t max_objects = std::size_t(1) << 24;
  /// Extra values (and string bytes) the result may have beyond the objects
  /// (and the pickle's bytes) because one object is referenced from several
  /// places: each place becomes a copy.
  static constexpr std::size_t min_copy_budget = std::size_t(1) << 16;
};

/// The globals read_torch_pickle() knows; anything else is refused.
enum class PickleGlobal {
  ordered_dict,       // collections.OrderedDict
  rebuild_tensor,     // torch._utils._rebuild_tensor_v2
  rebuild_parameter,  // torch._utils._rebuild_parameter
  storage_type,       // torch.<Type>Storage (with a dtype)
};

struct KnownGlobal {
  const char* module;
  const char* name;
  PickleGlobal role;
  DType dtype;  // for storage types
};

inline const std::vector<KnownGlobal>& known_pickle_globals() {
  static const std::vector<KnownGlobal> globals = {
      {"collections", "OrderedDict", PickleGlobal::ordered_dict, DType::F32},
      {"torch._utils", "_rebuild_tensor_v2", PickleGlobal::rebuild_tensor, DType::F32},
      {"torch._utils", "_rebuild_parameter", PickleGlobal::rebuild_parameter, DType::F32},
      {"torch", "FloatStorage", PickleGlobal::storage_type, DType::F32},
      {"torch", "DoubleStorage", PickleGlobal::storage_type, DType::F64},
      {"torch", "HalfStorage", PickleGlobal::storage_type, DType::F16},
      {"torch", "BFloat16Storage", PickleGlobal::storage_type, DType::BF16},
      {"torch", "LongStorage", PickleGlobal::storage_type, DType::I64},
      {"torch", "IntStorage", PickleGlobal::storage_type, DType::I32},
      {"torch", "ByteStorage", PickleGlobal::storage_type, DType::U8},
  };
  return globals;
}

/// The stack machine of the restricted unpickler. Objects live in an arena
/// (`objects_`) and refer to each other by index, with Python's reference
/// semantics: a container taken from the memo and filled later is the same
/// container. run() returns the arena index of the pickled object.
class TorchPickleMachine {
 public:
  TorchPickleMachine(const std::uint8_t* bytes, std::size_t size, std::string where)
      : bytes_(bytes), size_(size), where_(std::move(where)) {}

  TorchPickle read() {
    const std::size_t root = run();
    TorchPickle result;
    copy_budget_ = objects_.size() + PickleLimits::min_copy_budget;
    text_budget_ = size_ + PickleLimits::min_copy_budget;
    result.root = to_value(root, 0);
    result.tensors = std::move(tensors_);
    return result;
  }

 private:
  // The kinds of PickledValue, in the same order, then two that only the
  // machine sees: a known global (`global` says which) and a storage
  // reference made by BINPERSID.
  enum class Kind {
    none,
    boolean,
    integer,
    floating,
    string,
    list,
    tuple,
    dict,
    tensor,
    global,
    storage
  };
  struct Object {
    Kind kind = Kind::none;
    std::int64_t integer = 0;  // bool, int, tensor index, storage element count
    double floating = 0;
    std::string text;                     // str, storage key
    std::vector<std::size_t> items;       // list/tuple items; dict keys and values alternating
    const KnownGlobal* global = nullptr;  // a global; for a storage, its type
  };

  // --- reading the opcode stream -------------------------------------------

  [[noreturn]] void error_at(std::size_t at, const std::string& message) const {
    fail(where_, ": at byte ", at, ": ", message);
  }
  const std::uint8_t* take(std::size_t count) {
    if (size_ - pos_ < count) {
      error_at(pos_, xlstm::detail::concat("needs ", count, " bytes, only ", size_ - pos_,
                                           " left (pickle truncated)"));
    }
    const std::uint8_t* p = bytes_ + pos_;
    pos_ += count;
    return p;
  }
  template <typename UInt>
  UInt take_uint() {
    return load_little_endian<UInt>(take(sizeof(UInt)));
  }
  std::string take_string(std::uint64_t length) {
    if (length > size_ - pos_) {
      error_at(pos_, xlstm::detail::concat("string of ", length, " bytes, only ", size_ - pos_,
                                           " left (pickle truncated)"));
    }
    const char* p = reinterpret_cast<const char*>(take(static_cast<std::size_t>(length)));
    return std::string(p, static_cast<std::size_t>(length));
  }
  /// A text line of the GLOBAL opcode, without its '\n'.
  std::string take_line() {
    if (pos_ == size_) error_at(pos_, "GLOBAL name missing (pickle truncated)");
    const void* newline = std::memchr(bytes_ + pos_, '\n', size_ - pos_);
    if (newline == nullptr) error_at(pos_, "GLOBAL name has no end of line (pickle truncated)");
    const std::size_t length = static_cast<const std::uint8_t*>(newline) - (bytes_ + pos_);
    std::string line = take_string(length);
    pos_ += 1;
    return line;
  }

  // --- the stack and the arena ---------------------------------------------

  std::size_t add(Object object) {
    if (objects_.size() >= PickleLimits::max_objects) {
      error_at(op_at_, xlstm::detail::concat("more than ", PickleLimits::max_objects, " objects"));
    }
    objects_.push_back(std::move(object));
    return objects_.size() - 1;
  }
  void push_new(Object object) { stack_.push_back(add(std::move(object))); }
  std::size_t pop() {
    if (stack_.size() <= stack_floor()) error_at(op_at_, "stack underflow");
    const std::size_t top = stack_.back();
    stack_.pop_back();
    return top;
  }
  std::size_t top() const {
    if (stack_.size() <= stack_floor()) error_at(op_at_, "stack underflow");
    return stack_.back();
  }
  /// Items above the innermost MARK may be popped; those below it may not.
  std::size_t stack_floor() const { return marks_.empty() ? 0 : marks_.back(); }
  /// Pops everything above the innermost MARK and the MARK.
  std::vector<std::size_t> pop_to_mark() {
    if (marks_.empty()) error_at(op_at_, "no MARK to pop to");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<std::size_t> items(stack_.begin() + std::ptrdiff_t(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }
  static const char* name_of(Kind kind) {
    static const char* const names[] = {"None",  "bool", "int",    "float",  "str",    "list",
                                        "tuple", "dict", "tensor", "global", "storage"};
    return names[static_cast<int>(kind)];
  }
  const char* kind_name(std::size_t index) const { return name_of(objects_[index].kind); }
  Object& expect(std::size_t index, Kind kind, const char* what) {
    Object& o = objects_[index];
    if (o.kind != kind) {
      error_at(op_at_, xlstm::detail::concat(what, " must be a ", name_of(kind), ", found a ",
                                             kind_name(index)));
    }
    return o;
  }
  std::size_t new_tuple(std::vector<std::size_t> items) {
    Object tuple;
    tuple.kind = Kind::tuple;
    tuple.items = std::move(items);
    return add(std::move(tuple));
  }
  void set_items(std::size_t dict, const std::vector<std::size_t>& keys_and_values) {
    for (std::size_t i = 0; i < keys_and_values.size(); i += 2) {
      const Kind key = objects_[keys_and_values[i]].kind;
      if (key != Kind::string && key != Kind::integer) {
        error_at(op_at_, xlstm::detail::concat("dict key must be a str or int, found a ",
                                               kind_name(keys_and_values[i])));
      }
    }
    Object& d = expect(dict, Kind::dict, "SETITEM target");
    d.items.insert(d.items.end(), keys_and_values.begin(), keys_and_values.end());
  }

  // --- the opcodes ---------------------------------------------------------

  std::size_t run() {
    for (;;) {
      op_at_ = pos_;
      const std::uint8_t op = *take(1);
      switch (op) {
        case 0x80: {  // PROTO
          const unsigned version = *take(1);
          if (version < 2 || version > 5) {
            error_at(op_at_,
                     xlstm::detail::concat("pickle protocol ", version, " (expected 2 to 5)"));
          }
          break;
        }
        case 0x95: {  // FRAME: a length hint; frames need no handling here
          const std::uint64_t length = take_uint<std::uint64_t>();
          if (length > size_ - pos_) error_at(op_at_, "FRAME longer than the rest of the pickle");
          break;
        }
        case '.': {  // STOP
          if (!marks_.empty() || stack_.size() != 1) {
            error_at(op_at_, xlstm::detail::concat("STOP with ", stack_.size(),
                                                   " objects on the stack and ", marks_.size(),
                                                   " open MARKs (expected 1 and 0)"));
          }
          if (pos_ != size_)
            error_at(pos_, xlstm::detail::concat(size_ - pos_, " bytes after STOP"));
          return stack_.back();
        }
        case 'N':  // NONE
          push_new(Object{});
          break;
        case 0x88:  // NEWTRUE
        case 0x89:  // NEWFALSE
          push_new(integer_object(Kind::boolean, op == 0x88 ? 1 : 0));
          break;
        case 'K':  // BININT1
          push_new(integer_object(Kind::integer, *take(1)));
          break;
        case 'M':  // BININT2
          push_new(integer_object(Kind::integer, take_uint<std::uint16_t>()));
          break;
        case 'J':  // BININT: signed 32-bit
          push_new(
              integer_object(Kind::integer, static_cast<std::int32_t>(take_uint<std::uint32_t>())));
          break;
        case 0x8a:  // LONG1: n-byte two's complement
          push_new(integer_object(Kind::integer, take_long(*take(1))));
          break;
        case 'G': {  // BINFLOAT: big-endian IEEE double
          const std::uint8_t* p = take(8);
          std::uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];
          Object f;
          f.kind = Kind::floating;
          f.floating = bit_cast<double>(bits);
          push_new(std::move(f));
          break;
        }
        case 0x8c:  // SHORT_BINUNICODE
          push_string(take_string(*take(1)));
          break;
        case 'X':  // BINUNICODE
          push_string(take_string(take_uint<std::uint32_t>()));
          break;
        case 0x8d:  // BINUNICODE8
          push_string(take_string(take_uint<std::uint64_t>()));
          break;
        case '}':    // EMPTY_DICT
        case ']':    // EMPTY_LIST
        case ')': {  // EMPTY_TUPLE
          Object empty;
          empty.kind = op == '}' ? Kind::dict : op == ']' ? Kind::list : Kind::tuple;
          push_new(std::move(empty));
          break;
        }
        case '(':  // MARK
          marks_.push_back(stack_.size());
          break;
        case 't':  // TUPLE
          stack_.push_back(new_tuple(pop_to_mark()));
          break;
        case 0x85:    // TUPLE1
        case 0x86:    // TUPLE2
        case 0x87: {  // TUPLE3
          std::vector<std::size_t> items(std::size_t(op - 0x84));
          for (std::size_t i = items.size(); i-- > 0;) items[i] = pop();
          stack_.push_back(new_tuple(std::move(items)));
          break;
        }
        case 'a': {  // APPEND
          const std::size_t item = pop();
          expect(top(), Kind::list, "APPEND target").items.push_back(item);
          break;
        }
        case 'e': {  // APPENDS
          const std::vector<std::size_t> items = pop_to_mark();
          Object& list = expect(top(), Kind::list, "APPENDS target");
          list.items.insert(list.items.end(), items.begin(), items.end());
          break;
        }
        case 's': {  // SETITEM
          const std::size_t value = pop();
          const std::size_t key = pop();
          set_items(top(), {key, value});
          break;
        }
        case 'u': {  // SETITEMS
          const std::vector<std::size_t> items = pop_to_mark();
          if (items.size() % 2 != 0) error_at(op_at_, "SETITEMS with an odd number of items");
          set_items(top(), items);
          break;
        }
        case 'q':  // BINPUT
          memo_[*take(1)] = top();
          break;
        case 'r':  // LONG_BINPUT
          memo_[take_uint<std::uint32_t>()] = top();
          break;
        case 0x94:  // MEMOIZE
          memo_[static_cast<std::uint32_t>(memo_.size())] = top();
          break;
        case 'h':  // BINGET
          stack_.push_back(memo_get(*take(1)));
          break;
        case 'j':  // LONG_BINGET
          stack_.push_back(memo_get(take_uint<std::uint32_t>()));
          break;
        case 'c': {  // GLOBAL: "module\nname\n"
          std::string module = take_line();
          std::string name = take_line();
          push_global(module, name);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          const std::string name = expect(pop(), Kind::string, "STACK_GLOBAL name").text;
          const std::string module = expect(pop(), Kind::string, "STACK_GLOBAL module").text;
          push_global(module, name);
          break;
        }
        case 'Q':  // BINPERSID
          stack_.push_back(persistent_storage(pop()));
          break;
        case 'R': {  // REDUCE
          const std::size_t arguments = pop();
          const std::size_t callable = pop();
          stack_.push_back(reduce(callable, arguments));
          break;
        }
        case 'b':  // BUILD
          build(pop());
          break;
        default:
          error_at(op_at_,
                   xlstm::detail::concat("opcode 0x", std::hex, int(op), std::dec, printable(op),
                                         " is not supported by this restricted "
                                         "reader (it reads state dicts only)"));
      }
    }
  }

  static std::string printable(std::uint8_t op) {
    if (op >= 0x20 && op < 0x7f) return std::string(" ('") + char(op) + "')";
    return "";
  }

  static Object integer_object(Kind kind, std::int64_t value) {
    Object o;
    o.kind = kind;
    o.integer = value;
    return o;
  }
  void push_string(std::string text) {
    Object s;
    s.kind = Kind::string;
    s.text = std::move(text);
    push_new(std::move(s));
  }
  /// LONG1's little-endian two's complement integer of `length` bytes.
  std::int64_t take_long(std::size_t length) {
    if (length > 8) {
      error_at(op_at_, xlstm::detail::concat("integer of ", length, " bytes does not fit 64 bits"));
    }
    const std::uint8_t* p = take(length);
    std::uint64_t bits = 0;
    for (std::size_t i = length; i-- > 0;) bits = (bits << 8) | p[i];
    if (length > 0 && length < 8 && (p[length - 1] & 0x80u)) {
      bits |= ~std::uint64_t(0) << (8 * length);  // sign-extend
    }
    return static_cast<std::int64_t>(bits);
  }
  std::size_t memo_get(std::uint32_t key) const {
    const auto found = memo_.find(key);
    if (found == memo_.end()) error_at(op_at_, xlstm::detail::concat("memo has no entry ", key));
    return found->second;
  }

  void push_global(const std::string& module, const std::string& name) {
    for (const KnownGlobal& known : known_pickle_globals()) {
      if (module == known.module && name == known.name) {
        Object g;
        g.kind = Kind::global;
        g.global = &known;
        push_new(std::move(g));
        return;
      }
    }
    std::string allowed;
    for (const KnownGlobal& known : known_pickle_globals()) {
      allowed += (allowed.empty() ? "" : ", ") + std::string(known.module) + "." + known.name;
    }
    error_at(op_at_, "global '" + module + "." + name +
                         "' is not allowed (a state dict needs only: " + allowed + ")");
  }

  /// An integer of the pickle that must be a non-negative size.
  std::size_t size_of(std::size_t index, const char* what) {
    const std::int64_t value = expect(index, Kind::integer, what).integer;
    if (value < 0) error_at(op_at_, xlstm::detail::concat(what, " is negative (", value, ")"));
    if (std::uint64_t(value) > std::numeric_limits<std::size_t>::max()) {
      error_at(op_at_, xlstm::detail::concat(what, " ", value, " overflows std::size_t"));
    }
    return static_cast<std::size_t>(value);
  }
  /// The elements of a tuple of sizes (a shape or strides).
  std::vector<std::size_t> sizes_of(std::size_t index, const char* what) {
    std::vector<std::size_t> sizes;
    for (std::size_t item : expect(index, Kind::tuple, what).items) {
      sizes.push_back(size_of(item, what));
    }
    return sizes;
  }

  /// BINPERSID: torch's ('storage', storage type, key, location, element count).
  std::size_t persistent_storage(std::size_t id) {
    const std::vector<std::size_t> fields = expect(id, Kind::tuple, "persistent id").items;
    if (fields.size() != 5) {
      error_at(op_at_,
               xlstm::detail::concat("persistent id must have 5 fields, found ", fields.size()));
    }
    if (expect(fields[0], Kind::string, "persistent id type").text != "storage") {
      error_at(op_at_,
               "persistent id of type '" + objects_[fields[0]].text + "' (expected 'storage')");
    }
    const Object& type = objects_[fields[1]];
    if (type.kind != Kind::global || type.global->role != PickleGlobal::storage_type) {
      error_at(op_at_,
               xlstm::detail::concat("persistent id field 2 must be a storage type, found a ",
                                     kind_name(fields[1])));
    }
    Object storage;
    storage.kind = Kind::storage;
    storage.global = type.global;
    storage.text = expect(fields[2], Kind::string, "storage key").text;
    if (storage.text.empty()) error_at(op_at_, "storage key is empty");
    expect(fields[3], Kind::string, "storage location");  // "cpu", "cuda:0": all read alike
    storage.integer = static_cast<std::int64_t>(size_of(fields[4], "storage element count"));
    return add(std::move(storage));
  }

  std::size_t reduce(std::size_t callable, std::size_t arguments) {
    const Object& c = objects_[callable];
    if (c.kind != Kind::global) {
      error_at(op_at_, xlstm::detail::concat("REDUCE of a ", kind_name(callable),
                                             " (only the known globals may be called)"));
    }
    const std::vector<std::size_t> args = expect(arguments, Kind::tuple, "REDUCE arguments").items;
    const std::string name = std::string(c.global->module) + "." + c.global->name;
    switch (c.global->role) {
      case PickleGlobal::ordered_dict: {
        if (!args.empty()) error_at(op_at_, name + " called with arguments (expected none)");
        Object dict;
        dict.kind = Kind::dict;
        return add(std::move(dict));
      }
      case PickleGlobal::rebuild_tensor:
        return rebuild_tensor(args, name);
      case PickleGlobal::rebuild_parameter: {
        // (tensor, requires_grad, backward_hooks): the parameter is its tensor.
        if (args.size() != 3) {
          error_at(op_at_, xlstm::detail::concat(name, " called with ", args.size(),
                                                 " arguments (expected 3)"));
        }
        expect(args[0], Kind::tensor, "parameter data");
        expect(args[1], Kind::boolean, "requires_grad");
        expect_empty_dict(args[2], "backward hooks");
        return args[0];
      }
      case PickleGlobal::storage_type:
        break;
    }
    error_at(op_at_, "REDUCE of " + name + " (a storage type cannot be called)");
  }

  void expect_empty_dict(std::size_t index, const char* what) {
    if (!expect(index, Kind::dict, what).items.empty()) {
      error_at(op_at_, std::string(what) + " must be empty");
    }
  }

  /// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
  /// backward_hooks[, metadata]).
  std::size_t rebuild_tensor(const std::vector<std::size_t>& args, const std::string& name) {
    if (args.size() != 6 && args.size() != 7) {
      error_at(op_at_, xlstm::detail::concat(name, " called with ", args.size(),
                                             " arguments (expected 6 or 7)"));
    }
    const Object& storage = expect(args[0], Kind::storage, "tensor storage");
    TorchTensor tensor;
    tensor.storage_key = storage.text;
    tensor.dtype = storage.global->dtype;
    tensor.storage_elements = static_cast<std::size_t>(storage.integer);
    tensor.storage_offset = size_of(args[1], "storage offset");
    tensor.shape = sizes_of(args[2], "tensor size");
    tensor.strides = sizes_of(args[3], "tensor stride");
    if (tensor.strides.size() != tensor.shape.size()) {
      error_at(op_at_,
               xlstm::detail::concat("tensor size has ", tensor.shape.size(), " dimensions but ",
                                     "its stride ", tensor.strides.size()));
    }
    expect(args[4], Kind::boolean, "requires_grad");
    expect_empty_dict(args[5], "backward hooks");
    if (args.size() == 7 && objects_[args[6]].kind != Kind::none) {
      expect_empty_dict(args[6], "tensor metadata");
    }
    tensors_.push_back(std::move(tensor));
    return add(integer_object(Kind::tensor, std::int64_t(tensors_.size() - 1)));
  }

  /// BUILD: sets the state of an object. Only an OrderedDict's attributes
  /// (a state dict's `_metadata`) arrive this way; they are not needed.
  void build(std::size_t state) {
    const Kind kind = objects_[state].kind;
    if (kind != Kind::dict && kind != Kind::none) {
      error_at(op_at_,
               xlstm::detail::concat("BUILD state must be a dict, found a ", kind_name(state)));
    }
    expect(top(), Kind::dict, "BUILD target");
  }

  // --- the result ------------------------------------------------------------

  /// The arena object `index` as a tree of values, copying what is shared.
  PickledValue to_value(std::size_t index, std::size_t depth) {
    if (depth > PickleLimits::max_depth) {
      fail(where_, ": the pickled object nests deeper than ", PickleLimits::max_depth,
           " levels (or contains itself)");
    }
    if (copy_budget_ == 0) {
      fail(where_, ": the pickled object expands to more than ",
           objects_.size() + PickleLimits::min_copy_budget, " values (objects shared too often)");
    }
    --copy_budget_;
    const Object& o = objects_[index];
    switch (o.kind) {
      case Kind::none:
        return PickledValue();
      case Kind::boolean:
        return PickledValue::boolean(o.integer != 0);
      case Kind::integer:
        return PickledValue::integer(o.integer);
      case Kind::floating:
        return PickledValue::floating(o.floating);
      case Kind::string:
        if (o.text.size() > text_budget_) {
          fail(where_, ": the pickled object's strings expand to more than ",
               size_ + PickleLimits::min_copy_budget, " bytes (strings shared too often)");
        }
        text_budget_ -= o.text.size();
        return PickledValue::string(o.text);
      case Kind::tensor:
        return PickledValue::tensor(static_cast<std::size_t>(o.integer));
      case Kind::list:
      case Kind::tuple: {
        std::vector<PickledValue> items;
        items.reserve(o.items.size());
        for (std::size_t item : o.items) items.push_back(to_value(item, depth + 1));
        return PickledValue::sequence(
            o.kind == Kind::list ? PickledValue::Kind::list : PickledValue::Kind::tuple,
            std::move(items));
      }
      case Kind::dict: {
        std::vector<PickledValue::Entry> entries;
        std::set<std::string> string_keys;
        std::set<std::int64_t> integer_keys;
        entries.reserve(o.items.size() / 2);
        for (std::size_t i = 0; i < o.items.size(); i += 2) {
          const Object& key = objects_[o.items[i]];
          const bool fresh = key.kind == Kind::string ? string_keys.insert(key.text).second
                                                      : integer_keys.insert(key.integer).second;
          if (!fresh) {
            fail(where_, ": a dict has the key ",
                 key.kind == Kind::string ? "'" + key.text + "'" : std::to_string(key.integer),
                 " twice");
          }
          PickledValue k = to_value(o.items[i], depth + 1);
          entries.push_back({std::move(k), to_value(o.items[i + 1], depth + 1)});
        }
        return PickledValue::dict(std::move(entries));
      }
      case Kind::global:
      case Kind::storage:
        break;
    }
    fail(where_, ": the pickled object holds a ", kind_name(index),
         o.global ? std::string(" (") + o.global->module + "." + o.global->name + ")" : "",
         " as a value, which a checkpoint never does");
  }

  const std::uint8_t* bytes_;
  std::size_t size_;
  std::string where_;
  std::size_t pos_ = 0;
  std::size_t op_at_ = 0;  // offset of the opcode being run, for messages
  std::vector<Object> objects_;
  std::vector<std::size_t> stack_;  // arena indices
  std::vector<std::size_t> marks_;  // stack sizes at each open MARK
  std::unordered_map<std::uint32_t, std::size_t> memo_;
  std::vector<TorchTensor> tensors_;
  std::size_t copy_budget_ = 0;  // values to_value() may still make
  std::size_t text_budget_ = 0;  // string bytes to_value() may still copy
};

}  // namespace detail

/// Reads the pickle `bytes[0, size)` (a checkpoint's data.pkl) without running
/// anything. `where` (e.g. "model.ckpt: archive/data.pkl") starts every error
/// message. Throws Error for any opcode or global a state dict does not need,
/// and for malformed or truncated pickles.
inline TorchPickle read_torch_pickle(const std::uint8_t* bytes, std::size_t size,
                                     const std::string& where) {
  if (size != 0 && bytes == nullptr) fail(where, ": read_torch_pickle was given null bytes");
  return detail::TorchPickleMachine(bytes, size, where).read();
}

}  // namespace xlstm::io
