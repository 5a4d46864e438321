#include "m3/checkpoint/restricted_unpickler.h"

#include <bit>
#include <cstring>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "m3/core/error.h"

namespace m3 {
namespace {

// The few Python callables and classes a state dict refers to by GLOBAL.
enum class Callable {
  OrderedDict,
  RebuildTensorV2,
  RebuildParameter,
  Storage,  // a torch.<Type>Storage class, named in persistent ids only
};

enum class Kind { None, Bool, Int, Float, String, Tuple, List, Dict, Global, Storage, Tensor };

constexpr std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

struct Value {
  Kind kind = Kind::None;
  int64_t i = 0;               // Int, Bool
  double f = 0;                // Float
  std::string s;               // String; Global/Storage: qualified name
  std::vector<Value*> items;   // Tuple, List; Dict: key, value, key, value, ...
  Callable callable = Callable::OrderedDict;       // Global
  std::optional<DType> dtype;                      // Global(Storage)/Storage: nullopt = unsupported
  std::unique_ptr<PickledTensor> tensor;           // Storage (key, dtype, numel), Tensor
};

std::string_view opcode_name(unsigned char op) {
  switch (op) {
    case '(': return "MARK";            case '.': return "STOP";
    case '0': return "POP";             case '1': return "POP_MARK";
    case '2': return "DUP";             case 'F': return "FLOAT";
    case 'I': return "INT";             case 'J': return "BININT";
    case 'K': return "BININT1";         case 'L': return "LONG";
    case 'M': return "BININT2";         case 'N': return "NONE";
    case 'P': return "PERSID";          case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";          case 'S': return "STRING";
    case 'T': return "BINSTRING";       case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";         case 'X': return "BINUNICODE";
    case 'a': return "APPEND";          case 'b': return "BUILD";
    case 'c': return "GLOBAL";          case 'd': return "DICT";
    case '}': return "EMPTY_DICT";      case 'e': return "APPENDS";
    case 'g': return "GET";             case 'h': return "BINGET";
    case 'i': return "INST";            case 'j': return "LONG_BINGET";
    case 'l': return "LIST";            case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";             case 'p': return "PUT";
    case 'q': return "BINPUT";          case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";         case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";     case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";        case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";         case 0x82: return "EXT1";
    case 0x83: return "EXT2";           case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";         case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";         case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";       case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";          case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";  case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";      case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";      case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";   case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";          case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";    case 0x98: return "READONLY_BUFFER";
    default: return "unknown";
  }
}

std::optional<DType> storage_dtype(std::string_view name) {
  if (name == "FloatStorage") return DType::F32;
  if (name == "HalfStorage") return DType::F16;
  if (name == "BFloat16Storage") return DType::BF16;
  return std::nullopt;
}

bool is_storage_class(std::string_view name) {
  static const std::unordered_set<std::string_view> known = {
      "FloatStorage",   "HalfStorage",        "BFloat16Storage",     "DoubleStorage",
      "LongStorage",    "IntStorage",         "ShortStorage",        "CharStorage",
      "ByteStorage",    "BoolStorage",        "ComplexFloatStorage", "ComplexDoubleStorage",
      "QInt8Storage",   "QUInt8Storage",      "QInt32Storage",       "QUInt4x2Storage",
      "QUInt2x4Storage", "UntypedStorage"};
  return known.contains(name);
}

class Machine {
 public:
  Machine(std::span<const unsigned char> bytes, std::string_view source,
          const RestrictedUnpicklerLimits& limits)
      : data_(bytes), source_(source), limits_(limits) {}

  Value* run() {
    while (true) {
      op_pos_ = pos_;
      const unsigned char op = read_u8();
      op_ = op;
      if (dispatch(op)) break;
    }
    if (stack_.size() != 1 || !marks_.empty()) error("STOP with {} values on the stack", stack_.size());
    return stack_.back();
  }

  [[noreturn]] void error_at_top(const std::string& message) const {
    fail("{}: {}", source_, message);
  }

 private:
  template <typename... Args>
  [[noreturn]] void error(fmt::format_string<Args...> format, Args&&... args) const {
    fail("{}: bad pickle at byte {} (opcode {} 0x{:02x}): {}", source_, op_pos_,
         opcode_name(op_), op_, fmt::format(format, std::forward<Args>(args)...));
  }

  // ---- input ----
  void need(uint64_t n) const {
    if (n > data_.size() - pos_) error("truncated: needs {} more bytes, {} left", n, data_.size() - pos_);
  }
  unsigned char read_u8() {
    need(1);
    return data_[pos_++];
  }
  uint64_t read_le(size_t n) {
    need(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t(data_[pos_ + k]) << (8 * k);
    pos_ += n;
    return v;
  }
  std::string read_bytes(uint64_t n) {
    need(n);
    std::string s(reinterpret_cast<const char*>(data_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  std::string read_line() {
    constexpr size_t kMaxLine = 256;
    for (size_t k = pos_; k < data_.size() && k - pos_ <= kMaxLine; ++k) {
      if (data_[k] == '\n') {
        std::string s(reinterpret_cast<const char*>(data_.data() + pos_), k - pos_);
        pos_ = k + 1;
        return s;
      }
    }
    error("unterminated or overlong name line");
  }

  // ---- objects ----
  Value* make(Kind kind) {
    if (objects_.size() >= limits_.max_objects) error("more than {} objects", limits_.max_objects);
    objects_.push_back(std::make_unique<Value>());
    objects_.back()->kind = kind;
    return objects_.back().get();
  }
  Value* make_int(int64_t v) {
    Value* x = make(Kind::Int);
    x->i = v;
    return x;
  }
  Value* make_string(std::string s) {
    Value* x = make(Kind::String);
    x->s = std::move(s);
    return x;
  }

  // ---- stack ----
  void push(Value* v) {
    if (stack_.size() >= limits_.max_stack) error("stack deeper than {}", limits_.max_stack);
    stack_.push_back(v);
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  Value* pop() {
    if (stack_.size() <= floor()) error("stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() const {
    if (stack_.size() <= floor()) error("stack underflow");
    return stack_.back();
  }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) error("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }

  void memo_put(uint64_t index) {
    Value* v = top();
    auto it = memo_.find(index);
    if (it == memo_.end()) {
      if (memo_.size() >= limits_.max_memo) error("more than {} memo entries", limits_.max_memo);
      memo_.emplace(index, v);
    } else {
      it->second = v;
    }
  }
  Value* memo_get(uint64_t index) const {
    auto it = memo_.find(index);
    if (it == memo_.end()) error("memo key {} was never stored", index);
    return it->second;
  }

  void set_items(Value* dict, const std::vector<Value*>& kv) {
    if (dict->kind != Kind::Dict) error("target is a {}, not a dict", kind_name(dict->kind));
    if (kv.size() % 2 != 0) error("odd number of items for a dict");
    dict->items.insert(dict->items.end(), kv.begin(), kv.end());
  }
  void append_items(Value* list, const std::vector<Value*>& items) {
    if (list->kind != Kind::List) error("target is a {}, not a list", kind_name(list->kind));
    list->items.insert(list->items.end(), items.begin(), items.end());
  }

  Value* make_tuple(std::vector<Value*> items) {
    Value* t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  }

  Value* resolve_global(const std::string& module, const std::string& name) {
    const std::string qualified = module + "." + name;
    Value* g = make(Kind::Global);
    g->s = qualified;
    if (module == "collections" && name == "OrderedDict") {
      g->callable = Callable::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      g->callable = Callable::RebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      g->callable = Callable::RebuildParameter;
    } else if ((module == "torch" || module == "torch.storage") && is_storage_class(name)) {
      g->callable = Callable::Storage;
      g->dtype = module == "torch" ? storage_dtype(name) : std::nullopt;
    } else {
      error("forbidden global '{}' (only the globals of a tensor state dict are allowed; "
            "nothing is executed)", qualified);
    }
    return g;
  }

  int64_t as_int(const Value* v, std::string_view what) const {
    if (v->kind != Kind::Int) error("{} is a {}, not an int", what, kind_name(v->kind));
    return v->i;
  }
  std::vector<int64_t> as_int_tuple(const Value* v, std::string_view what) const {
    if (v->kind != Kind::Tuple) error("{} is a {}, not a tuple", what, kind_name(v->kind));
    if (v->items.size() > limits_.max_dims) error("{} has more than {} dimensions", what, limits_.max_dims);
    std::vector<int64_t> out;
    for (const Value* x : v->items) {
      const int64_t n = as_int(x, what);
      if (n < 0) error("{} has a negative entry {}", what, n);
      out.push_back(n);
    }
    return out;
  }

  Value* persistent_load(Value* pid) {
    if (pid->kind != Kind::Tuple || pid->items.size() != 5 || pid->items[0]->kind != Kind::String ||
        pid->items[0]->s != "storage")
      error("persistent id is not ('storage', type, key, location, numel)");
    const Value* type = pid->items[1];
    const Value* key = pid->items[2];
    const Value* location = pid->items[3];
    if (type->kind != Kind::Global || type->callable != Callable::Storage)
      error("persistent id names a {} '{}', not a storage type", kind_name(type->kind), type->s);
    if (key->kind != Kind::String || location->kind != Kind::String)
      error("storage key and location must be strings");
    const int64_t numel = as_int(pid->items[4], "storage numel");
    if (numel < 0) error("storage '{}' has negative size {}", key->s, numel);
    if (key->s.empty() || key->s.size() > 64 || key->s.find_first_of("/\\") != std::string::npos ||
        key->s == "." || key->s == "..")
      error("bad storage key '{}'", key->s);

    Value* st = make(Kind::Storage);
    st->s = type->s;
    st->dtype = type->dtype;
    st->tensor = std::make_unique<PickledTensor>();
    st->tensor->storage_key = key->s;
    st->tensor->storage_numel = numel;
    if (type->dtype) st->tensor->dtype = *type->dtype;
    auto [it, fresh] = storages_.emplace(key->s, st);
    if (!fresh && (it->second->s != st->s || it->second->tensor->storage_numel != numel))
      error("storage '{}' is described twice with different types or sizes", key->s);
    return st;
  }

  Value* reduce(Value* callable, Value* args) {
    if (callable->kind != Kind::Global) error("REDUCE on a {}, not a known callable", kind_name(callable->kind));
    if (args->kind != Kind::Tuple) error("REDUCE arguments are a {}, not a tuple", kind_name(args->kind));
    const auto& a = args->items;
    switch (callable->callable) {
      case Callable::OrderedDict:
        if (!a.empty()) error("collections.OrderedDict called with arguments");
        return make(Kind::Dict);
      case Callable::RebuildTensorV2: {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if (a.size() != 6 && a.size() != 7) error("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", a.size());
        if (a[0]->kind != Kind::Storage) error("_rebuild_tensor_v2 argument 0 is a {}, not a storage", kind_name(a[0]->kind));
        Value* t = make(Kind::Tensor);
        t->s = a[0]->s;
        t->dtype = a[0]->dtype;
        t->tensor = std::make_unique<PickledTensor>(*a[0]->tensor);
        t->tensor->storage_offset = as_int(a[1], "storage offset");
        if (t->tensor->storage_offset < 0) error("negative storage offset");
        t->tensor->size = as_int_tuple(a[2], "tensor size");
        t->tensor->stride = as_int_tuple(a[3], "tensor stride");
        if (t->tensor->size.size() != t->tensor->stride.size())
          error("tensor size has {} dimensions but stride has {}", t->tensor->size.size(), t->tensor->stride.size());
        if (a[4]->kind != Kind::Bool) error("requires_grad is a {}, not a bool", kind_name(a[4]->kind));
        if (a[5]->kind != Kind::Dict) error("backward_hooks is a {}, not a dict", kind_name(a[5]->kind));
        return t;
      }
      case Callable::RebuildParameter:
        // (data, requires_grad, backward_hooks)
        if (a.size() != 3) error("_rebuild_parameter takes 3 arguments, got {}", a.size());
        if (a[0]->kind != Kind::Tensor) error("_rebuild_parameter argument 0 is a {}, not a tensor", kind_name(a[0]->kind));
        if (a[1]->kind != Kind::Bool) error("requires_grad is a {}, not a bool", kind_name(a[1]->kind));
        if (a[2]->kind != Kind::Dict) error("backward_hooks is a {}, not a dict", kind_name(a[2]->kind));
        return a[0];
      case Callable::Storage:
        error("storage type '{}' cannot be called", callable->s);
    }
    error("unknown callable");
  }

  // Executes one opcode; returns true at STOP.
  bool dispatch(unsigned char op) {
    switch (op) {
      case 0x80: {  // PROTO
        const unsigned v = read_u8();
        if (v < 2 || v > 5) error("pickle protocol {} (2..5 supported)", v);
        return false;
      }
      case 0x95: {  // FRAME: a length hint; opcodes simply continue
        const uint64_t n = read_le(8);
        need(n);
        return false;
      }
      case '.':
        return true;
      case '(':
        if (marks_.size() >= limits_.max_stack) error("too many MARKs");
        marks_.push_back(stack_.size());
        return false;
      case '}': push(make(Kind::Dict)); return false;
      case ']': push(make(Kind::List)); return false;
      case ')': push(make_tuple({})); return false;
      case 't': push(make_tuple(pop_mark())); return false;
      case 0x85: case 0x86: case 0x87: {
        const size_t n = op - 0x84u;
        std::vector<Value*> items(n);
        for (size_t k = n; k-- > 0;) items[k] = pop();
        push(make_tuple(std::move(items)));
        return false;
      }
      case 'd': {
        auto kv = pop_mark();
        Value* d = make(Kind::Dict);
        set_items(d, kv);
        push(d);
        return false;
      }
      case 's': {
        Value* v = pop();
        Value* k = pop();
        set_items(top(), {k, v});
        return false;
      }
      case 'u': {
        auto kv = pop_mark();
        set_items(top(), kv);
        return false;
      }
      case 'a': {
        Value* v = pop();
        append_items(top(), {v});
        return false;
      }
      case 'e': {
        auto items = pop_mark();
        append_items(top(), items);
        return false;
      }
      case 'X': push(make_string(read_bytes(read_le(4)))); return false;
      case 0x8c: push(make_string(read_bytes(read_le(1)))); return false;
      case 0x8d: push(make_string(read_bytes(read_le(8)))); return false;
      case 'U': push(make_string(read_bytes(read_le(1)))); return false;
      case 'T': {
        const auto n = static_cast<int32_t>(static_cast<uint32_t>(read_le(4)));
        if (n < 0) error("negative string length");
        push(make_string(read_bytes(static_cast<uint64_t>(n))));
        return false;
      }
      case 'J': push(make_int(static_cast<int32_t>(static_cast<uint32_t>(read_le(4))))); return false;
      case 'K': push(make_int(static_cast<int64_t>(read_le(1)))); return false;
      case 'M': push(make_int(static_cast<int64_t>(read_le(2)))); return false;
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        const uint64_t n = read_le(1);
        if (n > 8) error("integer of {} bytes is too large", n);
        uint64_t v = read_le(n);
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t(0) << (8 * n);
        push(make_int(static_cast<int64_t>(v)));
        return false;
      }
      case 'G': {
        need(8);
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | data_[pos_ + k];
        pos_ += 8;
        Value* x = make(Kind::Float);
        x->f = std::bit_cast<double>(bits);
        push(x);
        return false;
      }
      case 'N': push(make(Kind::None)); return false;
      case 0x88: case 0x89: {
        Value* x = make(Kind::Bool);
        x->i = op == 0x88;
        push(x);
        return false;
      }
      case 'q': memo_put(read_le(1)); return false;
      case 'r': memo_put(read_le(4)); return false;
      case 0x94: memo_put(memo_.size()); return false;
      case 'h': push(memo_get(read_le(1))); return false;
      case 'j': push(memo_get(read_le(4))); return false;
      case 'c': {
        std::string module = read_line();
        std::string name = read_line();
        push(resolve_global(module, name));
        return false;
      }
      case 0x93: {
        Value* name = pop();
        Value* module = pop();
        if (name->kind != Kind::String || module->kind != Kind::String) error("STACK_GLOBAL needs two strings");
        push(resolve_global(module->s, name->s));
        return false;
      }
      case 'R': {
        Value* args = pop();
        Value* callable = pop();
        push(reduce(callable, args));
        return false;
      }
      case 'b': {
        pop();  // state: OrderedDict's __dict__ (state_dict()'s `_metadata`), ignored
        Value* target = top();
        if (target->kind != Kind::Dict) error("BUILD on a {} (only dicts accepted)", kind_name(target->kind));
        return false;
      }
      case 'Q': push(persistent_load(pop())); return false;
      default:
        error("opcode not allowed in a state dict");
    }
  }

  std::span<const unsigned char> data_;
  std::string source_;
  RestrictedUnpicklerLimits limits_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  unsigned char op_ = 0;
  std::vector<std::unique_ptr<Value>> objects_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  std::unordered_map<std::string, Value*> storages_;
};

class Flattener {
 public:
  Flattener(std::string_view source, const RestrictedUnpicklerLimits& limits)
      : source_(source), limits_(limits) {}

  void walk(const Value* dict, const std::string& prefix, size_t depth) {
    if (depth > limits_.max_depth) fail("{}: dicts nested deeper than {} at '{}'", source_, limits_.max_depth, prefix);
    for (size_t k = 0; k + 1 < dict->items.size(); k += 2) {
      const Value* key = dict->items[k];
      const Value* value = dict->items[k + 1];
      if (value->kind != Kind::Tensor && value->kind != Kind::Dict) continue;
      if (++visits_ > limits_.max_objects) fail("{}: more than {} entries in nested dicts", source_, limits_.max_objects);
      std::string name;
      if (key->kind == Kind::String) {
        name = key->s;
      } else if (key->kind == Kind::Int) {
        name = std::to_string(key->i);
      } else {
        fail("{}: dict key of type {} under '{}' (only str and int keys are accepted)", source_,
             kind_name(key->kind), prefix);
      }
      if (!prefix.empty()) name = prefix + "." + name;
      if (value->kind == Kind::Dict) {
        walk(value, name, depth + 1);
        continue;
      }
      if (!seen_.insert(name).second) fail("{}: tensor name '{}' appears twice", source_, name);
      out_.emplace_back(name, *value->tensor);
      if (!value->dtype) out_.back().second.unsupported_dtype = value->s;
    }
  }

  std::vector<std::pair<std::string, PickledTensor>> take() { return std::move(out_); }

 private:
  std::string source_;
  RestrictedUnpicklerLimits limits_;
  size_t visits_ = 0;
  std::unordered_set<std::string> seen_;
  std::vector<std::pair<std::string, PickledTensor>> out_;
};

}  // namespace

std::vector<std::pair<std::string, PickledTensor>> unpickle_state_dict(
    std::span<const unsigned char> bytes, std::string_view source,
    const RestrictedUnpicklerLimits& limits) {
  Machine machine(bytes, source, limits);
  const Value* root = machine.run();
  if (root->kind == Kind::Tensor)
    machine.error_at_top("the pickle holds a single tensor, not a dict of named tensors");
  if (root->kind != Kind::Dict)
    machine.error_at_top(fmt::format("the pickle holds a {}, not a dict of named tensors", kind_name(root->kind)));
  Flattener flattener(source, limits);
  flattener.walk(root, "", 0);
  return flattener.take();
}

}  // namespace m3
