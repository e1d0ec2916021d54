// Chat-template interpreter: lexer (with Jinja2's whitespace control), recursive-descent parser
// following jinja2/parser.py's precedence, and a tree-walking renderer over Python-like values.
// See chat_template.h for the contract and docs/tokenizers.md for the supported subset.
#include "tokenizer/chat_template.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "tokenizer/tokenizer.h"

namespace minfer {

using ojson = nlohmann::ordered_json;

const char* const kChatMLTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

namespace {

// ---------------------------------------------------------------------------------------------
// Values: Python's object model, reduced to what templates see.

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, as Python dicts
struct Args;
using Func = std::function<Value(Args&)>;

struct Value {
  enum class T { Undefined, None, Bool, Int, Float, Str, List, Dict, Func };
  T t = T::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // Str; for Undefined: the name that was looked up (for errors)
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Func> fn;
  bool tuple = false;       // a List written (a, b) or made by items(): repr uses parentheses
  bool namespace_ = false;  // namespace(): the one mutable object (`set ns.attr = ...`)

  static Value undefined(std::string name) {
    Value v;
    v.s = std::move(name);
    return v;
  }
  static Value none() {
    Value v;
    v.t = T::None;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.t = T::Bool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.t = T::Int;
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v;
    v.t = T::Float;
    v.f = x;
    return v;
  }
  static Value str(std::string x) {
    Value v;
    v.t = T::Str;
    v.s = std::move(x);
    return v;
  }
  static Value make_list(List l = {}, bool is_tuple = false) {
    Value v;
    v.t = T::List;
    v.list = std::make_shared<List>(std::move(l));
    v.tuple = is_tuple;
    return v;
  }
  static Value make_dict(Dict d = {}) {
    Value v;
    v.t = T::Dict;
    v.dict = std::make_shared<Dict>(std::move(d));
    return v;
  }
  static Value func(Func f) {
    Value v;
    v.t = T::Func;
    v.fn = std::make_shared<Func>(std::move(f));
    return v;
  }
  bool is_undefined() const { return t == T::Undefined; }
  bool is_number() const { return t == T::Int || t == T::Float || t == T::Bool; }
  double as_double() const { return t == T::Float ? f : t == T::Bool ? double(b) : double(i); }
  int64_t as_int() const { return t == T::Bool ? int64_t(b) : i; }
  const Value* find(const std::string& key) const {
    if (t != T::Dict) return nullptr;
    for (const auto& [k, v] : *dict)
      if (k == key) return &v;
    return nullptr;
  }
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Positional `i` or keyword `name`; nullptr if neither was given.
  const Value* get(size_t i, const char* name) const {
    if (i < pos.size()) return &pos[i];
    for (const auto& [k, v] : kw)
      if (k == name) return &v;
    return nullptr;
  }
};

// Thrown while rendering; the interpreter adds the origin and line.
struct RenderError {
  std::string message;
  bool raised = false;  // raise_exception()
};

[[noreturn]] void fail(const std::string& msg) {
  throw RenderError{msg, false};
}

const char* type_name(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined:
      return "undefined";
    case Value::T::None:
      return "NoneType";
    case Value::T::Bool:
      return "bool";
    case Value::T::Int:
      return "int";
    case Value::T::Float:
      return "float";
    case Value::T::Str:
      return "str";
    case Value::T::List:
      return v.tuple ? "tuple" : "list";
    case Value::T::Dict:
      return v.namespace_ ? "Namespace" : "dict";
    case Value::T::Func:
      return "function";
  }
  return "?";
}

// int64 arithmetic that errors where Python would switch to a big integer.
int64_t checked(int64_t a, int64_t b, char op) {
  int64_t r = 0;
  bool over = op == '+'   ? __builtin_add_overflow(a, b, &r)
              : op == '-' ? __builtin_sub_overflow(a, b, &r)
              : op == '*' ? __builtin_mul_overflow(a, b, &r)
                          : true;
  if (over)
    throw RenderError{fmt::format("integer overflow in {} {} {} (beyond 64 bits)", a, op, b)};
  return r;
}

[[noreturn]] void fail_undefined(const Value& v) {
  fail(v.s.empty() ? std::string("value is undefined") : fmt::format("'{}' is undefined", v.s));
}

// UTF-8 code points of s, as byte offsets (plus s.size() at the end): Python indexes strings by
// code point.
std::vector<size_t> code_point_offsets(const std::string& s) {
  std::vector<size_t> off;
  for (size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) off.push_back(i);
  off.push_back(s.size());
  return off;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// Python's float repr: the shortest digits that round-trip, fixed notation for exponents in
// [-4, 16), scientific otherwise ("1e+16", "1.5e-05"), and always a '.' or an exponent.
std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // "-d.ddde+XX"
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t e = sci.find('e');
  int exp = std::stoi(sci.substr(e + 1));
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out = digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return neg ? "-" + out : out;
}

std::string py_repr(const Value& v);

// Python str().
std::string py_str(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined:
      return "";
    case Value::T::None:
      return "None";
    case Value::T::Bool:
      return v.b ? "True" : "False";
    case Value::T::Int:
      return std::to_string(v.i);
    case Value::T::Float:
      return py_float(v.f);
    case Value::T::Str:
      return v.s;
    case Value::T::List: {
      std::string s = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) s += (k ? ", " : "") + py_repr((*v.list)[k]);
      if (v.tuple && v.list->size() == 1) s += ",";
      return s + (v.tuple ? ")" : "]");
    }
    case Value::T::Dict: {
      std::string s = v.namespace_ ? "<Namespace {" : "{";
      size_t k = 0;
      for (const auto& [key, val] : *v.dict)
        s += (k++ ? ", " : "") + py_repr(Value::str(key)) + ": " + py_repr(val);
      return s + (v.namespace_ ? "}>" : "}");
    }
    case Value::T::Func:
      return "<function>";
  }
  return "";
}

// Python repr(): strings quoted as Python quotes them.
std::string py_repr(const Value& v) {
  if (v.t != Value::T::Str) return py_str(v);
  const std::string& s = v.s;
  char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == q)
      out += std::string("\\") + char(q);
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7F)
      out += fmt::format("\\x{:02x}", c);
    else
      out += char(c);
  }
  return out + q;
}

bool truthy(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined:
    case Value::T::None:
      return false;
    case Value::T::Bool:
      return v.b;
    case Value::T::Int:
      return v.i != 0;
    case Value::T::Float:
      return v.f != 0;
    case Value::T::Str:
      return !v.s.empty();
    case Value::T::List:
      return !v.list->empty();
    case Value::T::Dict:
      return v.namespace_ || !v.dict->empty();
    case Value::T::Func:
      return true;
  }
  return false;
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.t == Value::T::Float || b.t == Value::T::Float) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.t != b.t) return false;
  switch (a.t) {
    case Value::T::Undefined:
    case Value::T::None:
      return true;
    case Value::T::Str:
      return a.s == b.s;
    case Value::T::List:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::T::Dict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    case Value::T::Func:
      return a.fn == b.fn;
    default:
      return false;
  }
}

// Python's <: numbers with numbers, strings with strings (code point order = UTF-8 byte order),
// lists lexicographically. Anything else is a TypeError, as in Python.
bool less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.t == Value::T::Float || b.t == Value::T::Float) return a.as_double() < b.as_double();
    return a.as_int() < b.as_int();
  }
  if (a.t == Value::T::Str && b.t == Value::T::Str) return a.s < b.s;
  if (a.t == Value::T::List && b.t == Value::T::List) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (less((*a.list)[k], (*b.list)[k])) return true;
      if (less((*b.list)[k], (*a.list)[k])) return false;
    }
    return a.list->size() < b.list->size();
  }
  fail(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a),
                   type_name(b)));
}

// Iterating: lists, dict keys, string characters; undefined iterates as empty (jinja2.Undefined).
List iterate(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined:
      return {};
    case Value::T::List:
      return *v.list;
    case Value::T::Dict: {
      List l;
      for (const auto& [k, val] : *v.dict) l.push_back(Value::str(k));
      return l;
    }
    case Value::T::Str: {
      List l;
      auto off = code_point_offsets(v.s);
      for (size_t k = 0; k + 1 < off.size(); ++k)
        l.push_back(Value::str(v.s.substr(off[k], off[k + 1] - off[k])));
      return l;
    }
    default:
      fail(fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

int64_t length(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined:
      return 0;
    case Value::T::Str:
      return int64_t(code_point_offsets(v.s).size() - 1);
    case Value::T::List:
      return int64_t(v.list->size());
    case Value::T::Dict:
      return int64_t(v.dict->size());
    default:
      fail(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

Value from_json(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null:
      return Value::none();
    case ojson::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case ojson::value_t::number_integer:
      return Value::integer(j.get<int64_t>());
    case ojson::value_t::number_unsigned:
      if (j.get<uint64_t>() > uint64_t(INT64_MAX))
        fail(fmt::format("integer {} in the template context is out of range", j.dump()));
      return Value::integer(int64_t(j.get<uint64_t>()));
    case ojson::value_t::number_float:
      return Value::real(j.get<double>());
    case ojson::value_t::string:
      return Value::str(j.get<std::string>());
    case ojson::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e));
      return Value::make_list(std::move(l));
    }
    case ojson::value_t::object: {
      Dict d;
      for (const auto& [k, e] : j.items()) d.emplace_back(k, from_json(e));
      return Value::make_dict(std::move(d));
    }
    default:
      fail("unsupported JSON value in the template context");
  }
}

// json.dumps(x, ensure_ascii=False, indent, separators, sort_keys), as transformers' tojson.
void dump_json(const Value& v, std::string& out, int indent, int depth, const std::string& item_sep,
               const std::string& key_sep, bool sort_keys) {
  auto newline = [&](int d) {
    if (indent >= 0) out += "\n" + std::string(size_t(indent) * size_t(d), ' ');
  };
  switch (v.t) {
    case Value::T::Undefined:
      fail("Object of type Undefined is not JSON serializable");
    case Value::T::None:
      out += "null";
      return;
    case Value::T::Bool:
      out += v.b ? "true" : "false";
      return;
    case Value::T::Int:
      out += std::to_string(v.i);
      return;
    case Value::T::Float:
      out += std::isnan(v.f)   ? "NaN"
             : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity")
                               : py_float(v.f);
      return;
    case Value::T::Str:
      out += '"';
      for (unsigned char c : v.s) {
        switch (c) {
          case '"':
            out += "\\\"";
            break;
          case '\\':
            out += "\\\\";
            break;
          case '\n':
            out += "\\n";
            break;
          case '\r':
            out += "\\r";
            break;
          case '\t':
            out += "\\t";
            break;
          case '\b':
            out += "\\b";
            break;
          case '\f':
            out += "\\f";
            break;
          default:
            if (c < 0x20)
              out += fmt::format("\\u{:04x}", c);
            else
              out += char(c);
        }
      }
      out += '"';
      return;
    case Value::T::List:
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += item_sep;
        newline(depth + 1);
        dump_json((*v.list)[k], out, indent, depth + 1, item_sep, key_sep, sort_keys);
      }
      newline(depth);
      out += ']';
      return;
    case Value::T::Dict: {
      if (v.dict->empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : *v.dict) items.push_back(&kv);
      if (sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += item_sep;
        newline(depth + 1);
        dump_json(Value::str(items[k]->first), out, indent, depth + 1, item_sep, key_sep,
                  sort_keys);
        out += key_sep;
        dump_json(items[k]->second, out, indent, depth + 1, item_sep, key_sep, sort_keys);
      }
      newline(depth);
      out += '}';
      return;
    }
    case Value::T::Func:
      fail("Object of type function is not JSON serializable");
  }
}

// Python's str.isspace() for an ASCII byte: space, \t \n \v \f \r and \x1c-\x1f.
bool py_space(unsigned char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F);
}

// str.isspace() for one UTF-8 encoded code point: the ASCII set above plus Unicode White_Space.
bool py_space_cp(const std::string& s, size_t pos, size_t len) {
  if (len == 1) return py_space(static_cast<unsigned char>(s[pos]));
  uint32_t cp = static_cast<unsigned char>(s[pos]) & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  auto is_strip = [&](size_t pos, size_t len) {
    if (!chars || chars->t == Value::T::None) return py_space_cp(s, pos, len);
    return chars->s.find(s.substr(pos, len)) != std::string::npos;
  };
  auto off = code_point_offsets(s);
  size_t a = 0, b = off.size() - 1;
  if (left)
    while (a < b && is_strip(off[a], off[a + 1] - off[a])) ++a;
  if (right)
    while (b > a && is_strip(off[b - 1], off[b] - off[b - 1])) --b;
  return s.substr(off[a], off[b] - off[a]);
}

// ---------------------------------------------------------------------------------------------
// Lexer. Jinja2's lexer (jinja2/lexer.py) with trim_blocks and lstrip_blocks on.

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok k;
  std::string s;  // text, name, string value or operator
  int64_t i = 0;
  double f = 0;
  int line = 0;
};

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {
    for (size_t k = 0; k < src_.size(); ++k)
      if (src_[k] == '\n') newlines_.push_back(k);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // the previous tag's match ended with '\n' (or we are at start)
    while (pos < src_.size()) {
      size_t q = pos;
      while (true) {
        q = src_.find('{', q);
        if (q == std::string::npos || q + 1 >= src_.size()) {
          q = std::string::npos;
          break;
        }
        char c = src_[q + 1];
        if (c == '{' || c == '%' || c == '#') break;
        ++q;
      }
      std::string text = src_.substr(pos, q == std::string::npos ? std::string::npos : q - pos);
      if (q == std::string::npos) {
        emit_text(text, pos);
        break;
      }
      const char kind = src_[q + 1];
      const char mod = q + 2 < src_.size() ? src_[q + 2] : '\0';
      if (mod == '-') {
        size_t e = text.size();
        while (e > 0 && py_space(text[e - 1])) --e;
        text.resize(e);
      } else if (mod != '+' && kind != '{') {  // lstrip_blocks: blocks and comments only
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if (l_pos > 0 || line_starting) {
          bool ws = l_pos < text.size();
          for (size_t k = l_pos; k < text.size(); ++k) ws = ws && py_space(text[k]);
          if (ws) text.resize(l_pos);
        }
      }
      emit_text(text, pos);
      size_t p = q + 2 + ((mod == '-' || (mod == '+' && kind != '{')) ? 1 : 0);
      if (kind == '#') {
        size_t e = src_.find("#}", p);
        if (e == std::string::npos) error(q, "unclosed comment: '{#' without '#}'");
        p = close_tag(e, 2, e > p && src_[e - 1] == '-', e > p && src_[e - 1] == '+', true);
      } else {
        const bool block = kind == '%';
        toks_.push_back({block ? Tok::BlockBegin : Tok::VarBegin, "", 0, 0, line_at(q)});
        p = lex_tag(p, block, q);
      }
      line_starting = p > 0 && src_[p - 1] == '\n';
      pos = p;
    }
    toks_.push_back({Tok::Eof, "", 0, 0, line_at(src_.size())});
    return std::move(toks_);
  }

  int line_at(size_t pos) const {
    return 1 + int(std::lower_bound(newlines_.begin(), newlines_.end(), pos) - newlines_.begin());
  }

 private:
  [[noreturn]] void error(size_t pos, const std::string& msg) const {
    throw RenderError{fmt::format("line {}: {}", line_at(pos), msg)};
  }

  void emit_text(const std::string& t, size_t pos) {
    if (!t.empty()) toks_.push_back({Tok::Text, t, 0, 0, line_at(pos)});
  }

  // `e` is where the closing delimiter ("%}", "}}", "#}") starts; returns the position after it
  // and the whitespace it swallows: all of it after "-", one '\n' after a block/comment end
  // (trim_blocks), nothing after "+" or "}}".
  size_t close_tag(size_t e, size_t len, bool minus, bool plus, bool trim) {
    size_t p = e + len;
    if (minus) {
      while (p < src_.size() && py_space(src_[p])) ++p;
    } else if (trim && !plus && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    return p;
  }

  size_t lex_tag(size_t p, bool block, size_t open) {
    std::vector<char> stack;  // open brackets: a closer inside them is an operator
    while (true) {
      while (p < src_.size() && py_space(src_[p])) ++p;
      if (p >= src_.size())
        error(open, block ? "unclosed tag: '{%' without '%}'" : "unclosed tag: '{{' without '}}'");
      auto at = [&](const char* s) { return src_.compare(p, std::strlen(s), s) == 0; };
      if (stack.empty()) {
        if (block && (at("-%}") || at("+%}") || at("%}"))) {
          const bool minus = src_[p] == '-', plus = src_[p] == '+';
          size_t e = p + (minus || plus ? 1 : 0);
          toks_.push_back({Tok::BlockEnd, "", 0, 0, line_at(p)});
          return close_tag(e, 2, minus, plus, true);
        }
        if (!block && (at("-}}") || at("}}"))) {
          const bool minus = src_[p] == '-';
          toks_.push_back({Tok::VarEnd, "", 0, 0, line_at(p)});
          return close_tag(p + (minus ? 1 : 0), 2, minus, false, false);
        }
      }
      const int line = line_at(p);
      const char c = src_[p];
      if (c == '\'' || c == '"') {
        p = lex_string(p, line);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = p;
        while (e < src_.size() &&
               (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
          ++e;
        bool is_float = false;
        if (e + 1 < src_.size() && src_[e] == '.' &&
            std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
          is_float = true;
          ++e;
          while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
        }
        if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
          size_t x = e + 1;
          if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
          if (x < src_.size() && std::isdigit(static_cast<unsigned char>(src_[x]))) {
            is_float = true;
            e = x;
            while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
          }
        }
        std::string num = src_.substr(p, e - p);
        num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
        Token t{is_float ? Tok::Float : Tok::Int, num, 0, 0, line};
        try {
          if (is_float)
            t.f = std::stod(num);
          else
            t.i = std::stoll(num);
        } catch (const std::exception&) {
          error(p, fmt::format("number '{}' out of range", num));
        }
        toks_.push_back(t);
        p = e;
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = p;
        while (e < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
          ++e;
        toks_.push_back({Tok::Name, src_.substr(p, e - p), 0, 0, line});
        p = e;
      } else {
        static const char* ops[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*",
                                    "/",  "%",  "~",  "|",  ".",  ",",  ":", "(", ")",
                                    "[",  "]",  "{",  "}",  "<",  ">",  "="};
        const char* op = nullptr;
        for (const char* o : ops)
          if (at(o)) {
            op = o;
            break;
          }
        if (!op) error(p, fmt::format("unexpected character '{}' in a tag", c));
        if (op[0] == '(' || op[0] == '[' || op[0] == '{') stack.push_back(op[0]);
        if (op[0] == ')' || op[0] == ']' || op[0] == '}') {
          const char want = op[0] == ')' ? '(' : op[0] == ']' ? '[' : '{';
          if (stack.empty() || stack.back() != want)
            error(p, fmt::format("unbalanced '{}' in a tag", op));
          stack.pop_back();
        }
        toks_.push_back({Tok::Op, op, 0, 0, line});
        p += std::strlen(op);
      }
    }
  }

  // A string literal; escapes as Python's "unicode-escape" codec decodes them (jinja2 does
  // exactly that): \n \t \r \\ \' \" \a \b \f \v, octal \ooo, \xhh, \uXXXX, \UXXXXXXXX; any other
  // backslash is kept as is.
  size_t lex_string(size_t p, int line) {
    const char q = src_[p];
    std::string out;
    size_t k = p + 1;
    while (true) {
      if (k >= src_.size()) error(p, "unterminated string literal");
      char c = src_[k];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        ++k;
        continue;
      }
      if (k + 1 >= src_.size()) error(p, "unterminated string literal");
      char e = src_[k + 1];
      k += 2;
      auto hex = [&](int n) {
        if (k + size_t(n) > src_.size()) error(p, "truncated \\x/\\u escape in a string literal");
        uint32_t v = 0;
        for (int d = 0; d < n; ++d) {
          char h = src_[k + size_t(d)];
          if (!std::isxdigit(static_cast<unsigned char>(h)))
            error(p, "invalid \\x/\\u escape in a string literal");
          v = v * 16 + uint32_t(std::isdigit(static_cast<unsigned char>(h))
                                    ? h - '0'
                                    : (std::tolower(h) - 'a' + 10));
        }
        k += size_t(n);
        return v;
      };
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          append_utf8(out, hex(2));
          break;
        case 'u':
          append_utf8(out, hex(4));
          break;
        case 'U':
          append_utf8(out, hex(8));
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = uint32_t(e - '0');
            for (int d = 0; d < 2 && k < src_.size() && src_[k] >= '0' && src_[k] <= '7'; ++d)
              v = v * 8 + uint32_t(src_[k++] - '0');
            append_utf8(out, v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    toks_.push_back({Tok::String, out, 0, 0, line});
    return k + 1;
  }

  const std::string& src_;
  std::vector<size_t> newlines_;
  std::vector<Token> toks_;
};

// ---------------------------------------------------------------------------------------------
// AST.

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum class K {
    Literal,
    Name,
    GetAttr,
    GetItem,
    Slice,
    Call,
    Filter,
    Test,
    Unary,
    Binary,
    Cond,
    ListLit,
    TupleLit,
    DictLit
  };
  K k;
  int line = 0;
  Value lit;
  std::string name;  // Name, attribute, filter/test name, operator
  std::vector<ExprP> a;
  std::vector<std::pair<std::string, ExprP>> kw;
  bool negate = false;  // `is not`
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class K { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Generation };
  K k;
  int line = 0;
  std::string text;                              // Text; Set/SetBlock/Macro: the name
  std::string attr;                              // Set: `set ns.attr = ...`
  std::vector<std::string> targets;              // For, Set (unpacking)
  ExprP expr;                                    // Output, Set value, For iterable
  ExprP cond;                                    // For: `for x in y if cond`
  std::vector<std::pair<ExprP, Body>> branches;  // If / elif
  Body body, else_body;
  std::vector<std::string> params;  // Macro
  std::vector<ExprP> defaults;      // Macro: one per param (nullptr: required)
};

// ---------------------------------------------------------------------------------------------
// Parser: jinja2/parser.py's grammar and precedence.

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Body parse() {
    Body b = parse_body({});
    if (peek().k != Tok::Eof) error(fmt::format("unexpected '{{% {} %}}'", t_[p_ + 1].s));
    return b;
  }

 private:
  const Token& peek(size_t ahead = 0) const { return t_[std::min(p_ + ahead, t_.size() - 1)]; }
  const Token& next() { return t_[std::min(p_++, t_.size() - 1)]; }
  [[noreturn]] void error(const std::string& msg) const {
    throw RenderError{fmt::format("line {}: {}", peek().line, msg)};
  }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).k == Tok::Op && peek(ahead).s == op;
  }
  bool is_name(const char* n, size_t ahead = 0) const {
    return peek(ahead).k == Tok::Name && peek(ahead).s == n;
  }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    ++p_;
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    ++p_;
    return true;
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) error(fmt::format("expected '{}', found {}", op, describe(peek())));
  }
  std::string expect_name() {
    if (peek().k != Tok::Name) error(fmt::format("expected a name, found {}", describe(peek())));
    return next().s;
  }
  void expect_block_end() {
    if (peek().k != Tok::BlockEnd)
      error(fmt::format("expected '%}}' to end the statement, found {}", describe(peek())));
    ++p_;
  }
  static std::string describe(const Token& t) {
    switch (t.k) {
      case Tok::Eof:
        return "the end of the template";
      case Tok::BlockEnd:
        return "'%}'";
      case Tok::VarEnd:
        return "'}}'";
      case Tok::Text:
        return "text";
      case Tok::String:
        return "a string";
      case Tok::Int:
      case Tok::Float:
        return "a number";
      default:
        return "'" + t.s + "'";
    }
  }

  // Statements until a `{% name %}` with name in `ends` (left unconsumed) or the end.
  Body parse_body(const std::set<std::string>& ends) {
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.k == Tok::Eof) return body;
      if (t.k == Tok::Text) {
        auto n = std::make_unique<Node>();
        n->k = Node::K::Text;
        n->line = t.line;
        n->text = t.s;
        body.push_back(std::move(n));
        ++p_;
      } else if (t.k == Tok::VarBegin) {
        ++p_;
        auto n = std::make_unique<Node>();
        n->k = Node::K::Output;
        n->line = t.line;
        n->expr = parse_tuple_expr();
        if (peek().k != Tok::VarEnd)
          error(fmt::format("expected '}}}}', found {}", describe(peek())));
        ++p_;
        body.push_back(std::move(n));
      } else if (t.k == Tok::BlockBegin) {
        const Token& kw = peek(1);
        if (kw.k != Tok::Name) error("expected a statement name after '{%'");
        if (ends.count(kw.s)) return body;
        body.push_back(parse_statement());
      } else {
        error(fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  // Consumes `{% name` for one of `ends`, returning the name; errors naming the opener if the
  // template ends first.
  std::string end_of(const char* opener, int line, const std::set<std::string>& ends) {
    if (peek().k == Tok::Eof) {
      std::string want;
      for (const auto& e : ends) want += (want.empty() ? "" : " or ") + e;
      error(fmt::format("unclosed '{{% {} %}}' block opened on line {} (expected {})", opener, line,
                        want));
    }
    ++p_;  // {%
    return next().s;
  }

  std::unique_ptr<Node> parse_statement() {
    Nest nest(*this);
    ++p_;  // {%
    const Token kw = next();
    auto n = std::make_unique<Node>();
    n->line = kw.line;
    const std::string& s = kw.s;
    if (s == "if") {
      n->k = Node::K::If;
      ExprP c = parse_tuple_expr();
      expect_block_end();
      while (true) {
        Body b = parse_body({"elif", "else", "endif"});
        n->branches.emplace_back(std::move(c), std::move(b));
        std::string e = end_of("if", kw.line, {"elif", "else", "endif"});
        if (e == "elif") {
          c = parse_tuple_expr();
          expect_block_end();
          continue;
        }
        expect_block_end();
        if (e == "else") {
          n->else_body = parse_body({"endif"});
          end_of("if", kw.line, {"endif"});
          expect_block_end();
        }
        break;
      }
    } else if (s == "for") {
      n->k = Node::K::For;
      bool paren = skip_op("(");
      do n->targets.push_back(expect_name());
      while (skip_op(","));
      if (paren) expect_op(")");
      if (!skip_name("in"))
        error(fmt::format("expected 'in' in 'for', found {}", describe(peek())));
      n->expr = parse_tuple_expr(/*with_condexpr=*/false);
      if (skip_name("if")) n->cond = parse_tuple_expr();
      if (is_name("recursive")) error("unsupported: recursive for loops ('for ... recursive')");
      expect_block_end();
      n->body = parse_body({"else", "endfor"});
      if (end_of("for", kw.line, {"else", "endfor"}) == "else") {
        expect_block_end();
        n->else_body = parse_body({"endfor"});
        end_of("for", kw.line, {"endfor"});
      }
      expect_block_end();
    } else if (s == "set") {
      std::string target = expect_name();
      if (skip_op(".")) {
        n->attr = expect_name();
      } else if (is_op(",")) {
        n->targets.push_back(target);
        while (skip_op(",")) n->targets.push_back(expect_name());
      }
      n->text = target;
      if (skip_op("=")) {
        n->k = Node::K::Set;
        n->expr = parse_tuple_expr();
        expect_block_end();
      } else {
        if (!n->attr.empty() || !n->targets.empty()) error("a block 'set' takes one name");
        if (is_op("|")) error("unsupported: filters on a block 'set'");
        n->k = Node::K::SetBlock;
        expect_block_end();
        n->body = parse_body({"endset"});
        end_of("set", kw.line, {"endset"});
        expect_block_end();
      }
    } else if (s == "macro") {
      n->k = Node::K::Macro;
      n->text = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        n->params.push_back(expect_name());
        n->defaults.push_back(skip_op("=") ? parse_expr() : nullptr);
        if (!skip_op(",")) break;
      }
      expect_op(")");
      expect_block_end();
      n->body = parse_body({"endmacro"});
      end_of("macro", kw.line, {"endmacro"});
      if (peek().k == Tok::Name) ++p_;  // {% endmacro name %}
      expect_block_end();
    } else if (s == "break" || s == "continue") {
      n->k = s == "break" ? Node::K::Break : Node::K::Continue;
      expect_block_end();
    } else if (s == "generation") {  // transformers' AssistantTracker: renders its body
      n->k = Node::K::Generation;
      expect_block_end();
      n->body = parse_body({"endgeneration"});
      end_of("generation", kw.line, {"endgeneration"});
      expect_block_end();
    } else if (s.rfind("end", 0) == 0 || s == "elif" || s == "else") {
      error(fmt::format("unexpected '{{% {} %}}' with no open block", s));
    } else {
      error(fmt::format("unsupported statement '{{% {} %}}'", s));
    }
    return n;
  }

  ExprP make(Expr::K k, int line) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->line = line;
    return e;
  }
  ExprP binary(const std::string& op, ExprP l, ExprP r, int line) {
    auto e = make(Expr::K::Binary, line);
    e->name = op;
    e->a.push_back(std::move(l));
    e->a.push_back(std::move(r));
    return e;
  }

  // `a, b` without brackets is a tuple (as in `{{ a, b }}` or `set x = 1, 2`).
  ExprP parse_tuple_expr(bool with_condexpr = true) {
    const int line = peek().line;
    ExprP first = with_condexpr ? parse_expr() : parse_or();
    if (!is_op(",")) return first;
    auto t = make(Expr::K::TupleLit, line);
    t->a.push_back(std::move(first));
    while (skip_op(",")) {
      if (peek().k == Tok::BlockEnd || peek().k == Tok::VarEnd || is_op(")")) break;
      t->a.push_back(with_condexpr ? parse_expr() : parse_or());
    }
    return t;
  }

  ExprP parse_expr() {  // conditional expression
    Nest nest(*this);
    ExprP e = parse_or();
    while (is_name("if")) {
      const int line = next().line;
      auto c = make(Expr::K::Cond, line);
      ExprP cond = parse_or();
      ExprP other = skip_name("else") ? parse_expr() : nullptr;
      c->a.push_back(std::move(e));
      c->a.push_back(std::move(cond));
      c->a.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }
  ExprP parse_or() {
    ExprP e = parse_and();
    while (is_name("or")) {
      int line = next().line;
      e = binary("or", std::move(e), parse_and(), line);
    }
    return e;
  }
  ExprP parse_and() {
    ExprP e = parse_not();
    while (is_name("and")) {
      int line = next().line;
      e = binary("and", std::move(e), parse_not(), line);
    }
    return e;
  }
  ExprP parse_not() {
    if (is_name("not")) {
      auto u = make(Expr::K::Unary, next().line);
      u->name = "not";
      u->a.push_back(parse_not());
      return u;
    }
    return parse_compare();
  }
  ExprP parse_compare() {
    ExprP left = parse_math1();
    ExprP result;  // a < b < c == (a < b) and (b < c), as in Python
    while (true) {
      std::string op;
      const int line = peek().line;
      if (peek().k == Tok::Op && (peek().s == "==" || peek().s == "!=" || peek().s == "<" ||
                                  peek().s == ">" || peek().s == "<=" || peek().s == ">=")) {
        op = next().s;
      } else if (is_name("in")) {
        ++p_;
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        p_ += 2;
        op = "not in";
      } else {
        break;
      }
      ExprP right = parse_math1();
      ExprP next_left = clone(*right);  // re-evaluating an operand is side-effect free here
      ExprP cmp = binary(op, std::move(left), std::move(right), line);
      result = result ? binary("and", std::move(result), std::move(cmp), line) : std::move(cmp);
      left = std::move(next_left);
    }
    return result ? std::move(result) : std::move(left);
  }
  ExprP clone(const Expr& x) {
    auto e = std::make_unique<Expr>();
    e->k = x.k;
    e->line = x.line;
    e->lit = x.lit;
    e->name = x.name;
    e->negate = x.negate;
    for (const auto& c : x.a) e->a.push_back(c ? clone(*c) : nullptr);
    for (const auto& [k, c] : x.kw) e->kw.emplace_back(k, clone(*c));
    return e;
  }
  ExprP parse_math1() {
    ExprP e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      e = binary(t.s, std::move(e), parse_concat(), t.line);
    }
    return e;
  }
  ExprP parse_concat() {
    ExprP e = parse_math2();
    while (is_op("~")) {
      int line = next().line;
      e = binary("~", std::move(e), parse_math2(), line);
    }
    return e;
  }
  ExprP parse_math2() {
    ExprP e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      e = binary(t.s, std::move(e), parse_pow(), t.line);
    }
    return e;
  }
  ExprP parse_pow() {
    ExprP e = parse_unary();
    while (is_op("**")) {
      int line = next().line;
      e = binary("**", std::move(e), parse_unary(), line);
    }
    return e;
  }
  ExprP parse_unary(bool with_filter = true) {
    Nest nest(*this);
    ExprP e;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      e = make(Expr::K::Unary, t.line);
      e->name = t.s;
      e->a.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }
  ExprP parse_primary() {
    const Token t = next();
    switch (t.k) {
      case Tok::Name: {
        if (t.s == "true" || t.s == "True" || t.s == "false" || t.s == "False") {
          auto e = make(Expr::K::Literal, t.line);
          e->lit = Value::boolean(t.s[0] == 't' || t.s[0] == 'T');
          return e;
        }
        if (t.s == "none" || t.s == "None") {
          auto e = make(Expr::K::Literal, t.line);
          e->lit = Value::none();
          return e;
        }
        auto e = make(Expr::K::Name, t.line);
        e->name = t.s;
        return e;
      }
      case Tok::String: {
        std::string s = t.s;
        while (peek().k == Tok::String) s += next().s;  // adjacent literals concatenate
        auto e = make(Expr::K::Literal, t.line);
        e->lit = Value::str(s);
        return e;
      }
      case Tok::Int:
      case Tok::Float: {
        auto e = make(Expr::K::Literal, t.line);
        e->lit = t.k == Tok::Int ? Value::integer(t.i) : Value::real(t.f);
        return e;
      }
      case Tok::Op:
        if (t.s == "(") {
          if (skip_op(")")) return make(Expr::K::TupleLit, t.line);
          ExprP e = parse_expr();
          if (is_op(",")) {
            auto tup = make(Expr::K::TupleLit, t.line);
            tup->a.push_back(std::move(e));
            while (skip_op(",")) {
              if (is_op(")")) break;
              tup->a.push_back(parse_expr());
            }
            e = std::move(tup);
          }
          expect_op(")");
          return e;
        }
        if (t.s == "[") {
          auto e = make(Expr::K::ListLit, t.line);
          while (!is_op("]")) {
            e->a.push_back(parse_expr());
            if (!skip_op(",")) break;
          }
          expect_op("]");
          return e;
        }
        if (t.s == "{") {
          auto e = make(Expr::K::DictLit, t.line);
          while (!is_op("}")) {
            e->a.push_back(parse_expr());
            expect_op(":");
            e->a.push_back(parse_expr());
            if (!skip_op(",")) break;
          }
          expect_op("}");
          return e;
        }
        [[fallthrough]];
      default:
        --p_;
        error(fmt::format("unexpected {} in an expression", describe(peek())));
    }
  }
  ExprP parse_postfix(ExprP e) {
    while (true) {
      if (is_op(".")) {
        const int line = next().line;
        if (peek().k == Tok::Int) {  // foo.0 = foo[0]
          auto g = make(Expr::K::GetItem, line);
          g->a.push_back(std::move(e));
          auto idx = make(Expr::K::Literal, line);
          idx->lit = Value::integer(next().i);
          g->a.push_back(std::move(idx));
          e = std::move(g);
          continue;
        }
        auto g = make(Expr::K::GetAttr, line);
        g->name = expect_name();
        g->a.push_back(std::move(e));
        e = std::move(g);
      } else if (is_op("[")) {
        const int line = next().line;
        ExprP parts[3];
        bool slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!is_op(":") && !is_op("]")) parts[k] = parse_expr();
          if (k < 2 && skip_op(":")) {
            slice = true;
            continue;
          }
          break;
        }
        expect_op("]");
        auto g = make(slice ? Expr::K::Slice : Expr::K::GetItem, line);
        g->a.push_back(std::move(e));
        if (!slice && !parts[0]) error("empty subscript '[]'");
        for (int k = 0; k < (slice ? 3 : 1); ++k) g->a.push_back(std::move(parts[k]));
        e = std::move(g);
      } else if (is_op("(")) {
        e = parse_call(std::move(e), Expr::K::Call);
      } else {
        return e;
      }
    }
  }
  // `(args, name=value)` after a callee (or a filter/test name): fills e->a[1..] and e->kw.
  ExprP parse_call(ExprP callee, Expr::K k, std::string name = "", bool negate = false) {
    auto e = make(k, peek().line);
    e->name = std::move(name);
    e->negate = negate;
    e->a.push_back(std::move(callee));
    if (!skip_op("(")) return e;
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) error("unsupported: *args / **kwargs in a call");
      if (peek().k == Tok::Name && is_op("=", 1)) {
        std::string kname = next().s;
        ++p_;
        e->kw.emplace_back(kname, parse_expr());
      } else {
        if (!e->kw.empty()) error("positional argument after a keyword argument");
        e->a.push_back(parse_expr());
      }
      if (!skip_op(",")) break;
    }
    expect_op(")");
    return e;
  }
  ExprP parse_filter_expr(ExprP e) {
    while (true) {
      if (is_op("|")) {
        ++p_;
        std::string name = expect_name();
        while (skip_op(".")) name += "." + expect_name();
        e = parse_call(std::move(e), Expr::K::Filter, name);
      } else if (is_name("is")) {
        ++p_;
        const bool neg = skip_name("not");
        std::string name;
        if (peek().k == Tok::Name)
          name = next().s;
        else if (peek().k == Tok::Op && (peek().s == "==" || peek().s == "!=" || peek().s == "<" ||
                                         peek().s == ">" || peek().s == "<=" || peek().s == ">="))
          name = next().s;
        else
          error(fmt::format("expected a test name after 'is', found {}", describe(peek())));
        if (is_op("(")) {
          e = parse_call(std::move(e), Expr::K::Test, name, neg);
        } else {
          auto t = make(Expr::K::Test, peek().line);
          t->name = name;
          t->negate = neg;
          t->a.push_back(std::move(e));
          const Token& n = peek();
          const bool arg = n.k == Tok::String || n.k == Tok::Int || n.k == Tok::Float ||
                           (n.k == Tok::Name && n.s != "else" && n.s != "or" && n.s != "and" &&
                            n.s != "if" && n.s != "is" && n.s != "in" && n.s != "not") ||
                           is_op("[") || is_op("{");
          if (arg) t->a.push_back(parse_postfix(parse_primary()));
          e = std::move(t);
        }
      } else if (is_op("(")) {
        e = parse_call(std::move(e), Expr::K::Call);
      } else {
        return e;
      }
    }
  }

  // Nesting bound: a hostile template cannot exhaust the stack of the recursive descent.
  static constexpr int kMaxDepth = 256;
  struct Nest {
    Parser& p;
    explicit Nest(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxDepth) p.error(fmt::format("nesting deeper than {}", kMaxDepth));
    }
    ~Nest() { --p.depth_; }
  };

  std::vector<Token> t_;
  size_t p_ = 0;
  int depth_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Renderer.

struct ChatTemplate::Impl {
  std::string origin;
  Body body;

  using Frame = std::map<std::string, Value>;

  struct State {
    std::vector<std::shared_ptr<Frame>> frames;  // [0] globals, [1] template, then loop/macro
    std::string* out;
    int* macro_depth = nullptr;  // shared by the macro calls of one render
    int64_t* steps = nullptr;    // loop iterations + macro calls so far in this render
    int64_t max_steps = 0;       // RenderOptions::max_steps: a runaway loop is an error
  };
  static constexpr int kMaxMacroDepth = 64;              // recursive macros end in an error
  static constexpr size_t kMaxString = size_t(1) << 26;  // 64 MiB: 'a' * 10**12 is an error

  enum class Flow { Normal, Break, Continue };

  static void step(State& st) {
    if (++*st.steps > st.max_steps)
      fail(fmt::format("more than {} loop iterations and macro calls", st.max_steps));
  }

  static Value lookup(State& st, const std::string& name) {
    for (auto it = st.frames.rbegin(); it != st.frames.rend(); ++it) {
      auto f = (*it)->find(name);
      if (f != (*it)->end()) return f->second;
    }
    return Value::undefined(name);
  }

  Flow exec_body(const Body& b, State& st) const {
    for (const auto& n : b) {
      Flow f = exec(*n, st);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Node& n, State& st) const {
    try {
      return exec_inner(n, st);
    } catch (RenderError& e) {
      if (!e.raised && e.message.rfind("line ", 0) != 0)
        e.message = fmt::format("line {}: {}", n.line, e.message);
      throw;
    }
  }

  void assign(State& st, const std::vector<std::string>& names, const Value& v) const {
    Frame& f = *st.frames.back();
    if (names.size() == 1) {
      f[names[0]] = v;
      return;
    }
    List items = iterate(v);
    if (items.size() != names.size())
      fail(fmt::format("cannot unpack {} values into {} names", items.size(), names.size()));
    for (size_t k = 0; k < names.size(); ++k) f[names[k]] = items[k];
  }

  Flow exec_inner(const Node& n, State& st) const {
    switch (n.k) {
      case Node::K::Text:
        *st.out += n.text;
        return Flow::Normal;
      case Node::K::Output:
        *st.out += py_str(eval(*n.expr, st));
        if (st.out->size() > kMaxString)
          fail(fmt::format("output longer than {} bytes", kMaxString));
        return Flow::Normal;
      case Node::K::If:
        for (const auto& [c, b] : n.branches)
          if (truthy(eval(*c, st))) return exec_body(b, st);
        return exec_body(n.else_body, st);
      case Node::K::Set: {
        Value v = eval(*n.expr, st);
        if (!n.attr.empty()) {
          Value ns = lookup(st, n.text);
          if (ns.t != Value::T::Dict || !ns.namespace_)
            fail(fmt::format("'set {}.{}': '{}' is not a namespace()", n.text, n.attr, n.text));
          for (auto& [k, val] : *ns.dict)
            if (k == n.attr) {
              val = v;
              return Flow::Normal;
            }
          ns.dict->emplace_back(n.attr, v);
        } else {
          assign(st, n.targets.empty() ? std::vector<std::string>{n.text} : n.targets, v);
        }
        return Flow::Normal;
      }
      case Node::K::SetBlock: {
        std::string buf;
        std::string* saved = st.out;
        st.out = &buf;
        exec_body(n.body, st);
        st.out = saved;
        (*st.frames.back())[n.text] = Value::str(buf);
        return Flow::Normal;
      }
      case Node::K::Macro: {
        const Node* m = &n;
        // Weak: the macro lives in a frame it would otherwise keep alive (a leak).
        std::vector<std::weak_ptr<Frame>> root(st.frames.begin(), st.frames.begin() + 2);
        int* depth = st.macro_depth;
        int64_t* steps = st.steps;
        const int64_t max_steps = st.max_steps;
        (*st.frames.back())[n.text] = Value::func([this, m, root, depth, steps,
                                                   max_steps](Args& args) {
          State ms{{}, nullptr, depth, steps, max_steps};
          step(ms);
          if (++*depth > kMaxMacroDepth) {
            --*depth;
            fail(fmt::format("macro '{}': calls nested deeper than {}", m->text, kMaxMacroDepth));
          }
          struct Leave {
            int* d;
            ~Leave() { --*d; }
          } leave{depth};
          for (const auto& w : root) {
            ms.frames.push_back(w.lock());
            if (!ms.frames.back()) fail(fmt::format("macro '{}' called after rendering", m->text));
          }
          auto frame = std::make_shared<Frame>();
          if (args.pos.size() > m->params.size())
            fail(fmt::format("macro '{}' takes {} arguments, {} given", m->text, m->params.size(),
                             args.pos.size()));
          for (const auto& [k, v] : args.kw)
            if (std::find(m->params.begin(), m->params.end(), k) == m->params.end())
              fail(fmt::format("macro '{}' has no parameter '{}'", m->text, k));
          ms.frames.push_back(frame);
          for (size_t k = 0; k < m->params.size(); ++k) {
            const Value* v = args.get(k, m->params[k].c_str());
            (*frame)[m->params[k]] = v                ? *v
                                     : m->defaults[k] ? eval(*m->defaults[k], ms)
                                                      : Value::undefined(m->params[k]);
          }
          std::string buf;
          ms.out = &buf;
          exec_body(m->body, ms);
          return Value::str(buf);
        });
        return Flow::Normal;
      }
      case Node::K::Break:
        return Flow::Break;
      case Node::K::Continue:
        return Flow::Continue;
      case Node::K::Generation:
        return exec_body(n.body, st);
      case Node::K::For: {
        List items = iterate(eval(*n.expr, st));
        if (n.cond) {  // the loop filter runs before loop.* is computed, as in jinja2
          List kept;
          for (const Value& it : items) {
            st.frames.push_back(std::make_shared<Frame>());
            assign(st, n.targets, it);
            bool keep = truthy(eval(*n.cond, st));
            st.frames.pop_back();
            if (keep) kept.push_back(it);
          }
          items = std::move(kept);
        }
        const int64_t len = int64_t(items.size());
        for (int64_t k = 0; k < len; ++k) {
          step(st);
          st.frames.push_back(std::make_shared<Frame>());
          Dict loop = {
              {"index", Value::integer(k + 1)},
              {"index0", Value::integer(k)},
              {"revindex", Value::integer(len - k)},
              {"revindex0", Value::integer(len - k - 1)},
              {"first", Value::boolean(k == 0)},
              {"last", Value::boolean(k == len - 1)},
              {"length", Value::integer(len)},
              {"depth", Value::integer(1)},
              {"depth0", Value::integer(0)},
              {"previtem", k > 0 ? items[size_t(k - 1)] : Value::undefined("previtem")},
              {"nextitem", k + 1 < len ? items[size_t(k + 1)] : Value::undefined("nextitem")}};
          (*st.frames.back())["loop"] = Value::make_dict(std::move(loop));
          assign(st, n.targets, items[size_t(k)]);
          Flow f = exec_body(n.body, st);
          st.frames.pop_back();
          if (f == Flow::Break) break;
        }
        if (len == 0) return exec_body(n.else_body, st);
        return Flow::Normal;
      }
    }
    return Flow::Normal;
  }

  Value eval(const Expr& e, State& st) const {
    switch (e.k) {
      case Expr::K::Literal:
        return e.lit;
      case Expr::K::Name:
        return lookup(st, e.name);
      case Expr::K::ListLit:
      case Expr::K::TupleLit: {
        List l;
        for (const auto& x : e.a) l.push_back(eval(*x, st));
        return Value::make_list(std::move(l), e.k == Expr::K::TupleLit);
      }
      case Expr::K::DictLit: {
        Dict d;
        for (size_t k = 0; k + 1 < e.a.size(); k += 2) {
          Value key = eval(*e.a[k], st);
          if (key.t != Value::T::Str) fail("dict literal keys must be strings");
          Value v = eval(*e.a[k + 1], st);
          auto it = std::find_if(d.begin(), d.end(), [&](auto& kv) { return kv.first == key.s; });
          if (it != d.end())
            it->second = v;
          else
            d.emplace_back(key.s, v);
        }
        return Value::make_dict(std::move(d));
      }
      case Expr::K::GetAttr: {
        Value obj = eval(*e.a[0], st);
        if (obj.is_undefined()) fail_undefined(obj);
        if (const Value* v = obj.find(e.name)) return *v;
        return Value::undefined(fmt::format("{}.{}", describe_expr(*e.a[0]), e.name));
      }
      case Expr::K::GetItem:
        return get_item(eval(*e.a[0], st), eval(*e.a[1], st), *e.a[0]);
      case Expr::K::Slice:
        return slice(e, st);
      case Expr::K::Call:
        return call(e, st);
      case Expr::K::Filter:
        return filter(e, st);
      case Expr::K::Test: {
        bool r = test(e, st);
        return Value::boolean(e.negate ? !r : r);
      }
      case Expr::K::Unary: {
        Value v = eval(*e.a[0], st);
        if (e.name == "not") return Value::boolean(!truthy(v));
        if (v.is_undefined()) fail_undefined(v);
        if (!v.is_number())
          fail(fmt::format("bad operand type for unary {}: '{}'", e.name, type_name(v)));
        if (e.name == "+") return v.t == Value::T::Bool ? Value::integer(v.b) : v;
        if (v.t == Value::T::Float) return Value::real(-v.f);
        return Value::integer(checked(0, v.as_int(), '-'));
      }
      case Expr::K::Cond: {
        if (truthy(eval(*e.a[1], st))) return eval(*e.a[0], st);
        return e.a[2] ? eval(*e.a[2], st) : Value::undefined("");
      }
      case Expr::K::Binary:
        return binary(e, st);
    }
    return Value();
  }

  static std::string describe_expr(const Expr& e) {
    if (e.k == Expr::K::Name) return e.name;
    if (e.k == Expr::K::GetAttr) return describe_expr(*e.a[0]) + "." + e.name;
    return "value";
  }

  // jinja2's Environment.getitem: obj[key], falling back to an attribute, else undefined;
  // only an undefined obj is an error.
  static Value get_item(const Value& obj, const Value& key, const Expr& what) {
    auto missing = [&]() {
      return Value::undefined(fmt::format("{}[{}]", describe_expr(what), py_repr(key)));
    };
    if (obj.is_undefined()) fail_undefined(obj);
    if (obj.t == Value::T::Dict) {
      if (key.t == Value::T::Str)
        if (const Value* v = obj.find(key.s)) return *v;
      return missing();
    }
    if ((obj.t == Value::T::List || obj.t == Value::T::Str) &&
        (key.t == Value::T::Int || key.t == Value::T::Bool)) {
      int64_t n = length(obj), k = key.as_int();
      if (k < 0) k += n;
      if (k < 0 || k >= n) return missing();
      if (obj.t == Value::T::List) return (*obj.list)[size_t(k)];
      auto off = code_point_offsets(obj.s);
      return Value::str(obj.s.substr(off[size_t(k)], off[size_t(k) + 1] - off[size_t(k)]));
    }
    return missing();
  }

  Value slice(const Expr& e, State& st) const {
    Value obj = eval(*e.a[0], st);
    if (obj.is_undefined()) fail_undefined(obj);
    if (obj.t != Value::T::List && obj.t != Value::T::Str)
      fail(fmt::format("'{}' object is not subscriptable", type_name(obj)));
    std::optional<int64_t> part[3];
    for (int k = 0; k < 3; ++k)
      if (e.a[size_t(k) + 1]) {
        Value v = eval(*e.a[size_t(k) + 1], st);
        if (v.t == Value::T::None) continue;
        if (v.t != Value::T::Int && v.t != Value::T::Bool)
          fail("slice indices must be integers or None");
        part[k] = v.as_int();
      }
    const int64_t n = length(obj), step = part[2].value_or(1);
    if (step == 0) fail("slice step cannot be zero");
    // Python's PySlice_AdjustIndices.
    auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      int64_t x = *v;
      if (x < 0)
        x = std::max<int64_t>(x + n, step < 0 ? -1 : 0);
      else
        x = std::min<int64_t>(x, step < 0 ? n - 1 : n);
      return x;
    };
    int64_t start = adjust(part[0], step < 0 ? n - 1 : 0),
            stop = adjust(part[1], step < 0 ? -1 : n);
    std::vector<int64_t> idx;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) idx.push_back(k);
    if (obj.t == Value::T::List) {
      List l;
      for (int64_t k : idx) l.push_back((*obj.list)[size_t(k)]);
      return Value::make_list(std::move(l), obj.tuple);
    }
    auto off = code_point_offsets(obj.s);
    std::string s;
    for (int64_t k : idx) s += obj.s.substr(off[size_t(k)], off[size_t(k) + 1] - off[size_t(k)]);
    return Value::str(s);
  }

  Value binary(const Expr& e, State& st) const {
    const std::string& op = e.name;
    if (op == "and") {
      Value l = eval(*e.a[0], st);
      return truthy(l) ? eval(*e.a[1], st) : l;
    }
    if (op == "or") {
      Value l = eval(*e.a[0], st);
      return truthy(l) ? l : eval(*e.a[1], st);
    }
    Value l = eval(*e.a[0], st), r = eval(*e.a[1], st);
    if (op == "~") return Value::str(py_str(l) + py_str(r));
    if (op == "==") return Value::boolean(equals(l, r));
    if (op == "!=") return Value::boolean(!equals(l, r));
    if (op == "in" || op == "not in") {
      bool in = contains(r, l);
      return Value::boolean(op == "in" ? in : !in);
    }
    if (l.is_undefined()) fail_undefined(l);
    if (r.is_undefined()) fail_undefined(r);
    if (op == "<") return Value::boolean(less(l, r));
    if (op == ">") return Value::boolean(less(r, l));
    if (op == "<=") return Value::boolean(!less(r, l));
    if (op == ">=") return Value::boolean(!less(l, r));
    auto type_error = [&]() {
      fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(l),
                       type_name(r)));
    };
    if (op == "+") {
      if (l.t == Value::T::Str && r.t == Value::T::Str) return Value::str(l.s + r.s);
      if (l.t == Value::T::List && r.t == Value::T::List) {
        List c = *l.list;
        c.insert(c.end(), r.list->begin(), r.list->end());
        return Value::make_list(std::move(c), l.tuple && r.tuple);
      }
    }
    if (op == "*" && (l.t == Value::T::Str || r.t == Value::T::Str)) {
      const Value& s = l.t == Value::T::Str ? l : r;
      const Value& k = l.t == Value::T::Str ? r : l;
      if (k.t != Value::T::Int && k.t != Value::T::Bool) type_error();
      std::string out;
      if (k.as_int() > 0 && !s.s.empty() && uint64_t(k.as_int()) > kMaxString / s.s.size())
        fail(fmt::format("string repetition longer than {} bytes", kMaxString));
      for (int64_t c = 0; c < k.as_int(); ++c) out += s.s;
      return Value::str(out);
    }
    if (!l.is_number() || !r.is_number()) type_error();
    const bool fl = l.t == Value::T::Float || r.t == Value::T::Float;
    if (op == "/") {
      if (r.as_double() == 0) fail("division by zero");
      return Value::real(l.as_double() / r.as_double());
    }
    if (op == "**") {
      if (!fl && r.as_int() >= 0) {
        int64_t out = 1, base = l.as_int();
        for (int64_t ex = r.as_int(); ex > 0; ex >>= 1) {  // by squaring, overflow checked
          if (ex & 1) out = checked(out, base, '*');
          if (ex > 1) base = checked(base, base, '*');
        }
        return Value::integer(out);
      }
      return Value::real(std::pow(l.as_double(), r.as_double()));
    }
    if (fl) {
      double a = l.as_double(), b = r.as_double();
      if (op == "+") return Value::real(a + b);
      if (op == "-") return Value::real(a - b);
      if (op == "*") return Value::real(a * b);
      if (b == 0) fail("float division by zero");
      if (op == "//") return Value::real(std::floor(a / b));
      if (op == "%") {
        double m = std::fmod(a, b);
        if (m != 0 && ((m < 0) != (b < 0))) m += b;
        return Value::real(m);
      }
    } else {
      int64_t a = l.as_int(), b = r.as_int();
      if (op == "+") return Value::integer(checked(a, b, '+'));
      if (op == "-") return Value::integer(checked(a, b, '-'));
      if (op == "*") return Value::integer(checked(a, b, '*'));
      if (a == INT64_MIN && b == -1) checked(a, b, '/');
      if (b == 0) fail("integer division or modulo by zero");
      int64_t q = a / b, m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) {
        --q;
        m += b;
      }
      if (op == "//") return Value::integer(q);
      if (op == "%") return Value::integer(m);
    }
    fail(fmt::format("unsupported operator '{}'", op));
  }

  static bool contains(const Value& container, const Value& item) {
    switch (container.t) {
      case Value::T::Undefined:
        return false;
      case Value::T::Str:
        if (item.t != Value::T::Str)
          fail(fmt::format("'in <string>' requires string as left operand, not {}",
                           type_name(item)));
        return container.s.find(item.s) != std::string::npos;
      case Value::T::List:
        for (const Value& v : *container.list)
          if (equals(v, item)) return true;
        return false;
      case Value::T::Dict:
        return item.t == Value::T::Str && container.find(item.s) != nullptr;
      default:
        fail(fmt::format("argument of type '{}' is not iterable", type_name(container)));
    }
  }

  Args eval_args(const Expr& e, State& st) const {
    Args a;
    for (size_t k = 1; k < e.a.size(); ++k) a.pos.push_back(eval(*e.a[k], st));
    for (const auto& [name, x] : e.kw) a.kw.emplace_back(name, eval(*x, st));
    return a;
  }

  static void want_args(const std::string& what, const Args& a, size_t lo, size_t hi) {
    if (a.pos.size() + a.kw.size() < lo || a.pos.size() + a.kw.size() > hi)
      fail(fmt::format("{} takes {} to {} arguments, {} given", what, lo, hi,
                       a.pos.size() + a.kw.size()));
  }

  static const std::string& want_str(const std::string& what, const Value* v) {
    if (!v || v->t != Value::T::Str)
      fail(fmt::format("{}: expected a string argument, got {}", what, v ? type_name(*v) : "none"));
    return v->s;
  }

  Value call(const Expr& e, State& st) const {
    const Expr& callee = *e.a[0];
    if (callee.k == Expr::K::GetAttr) {
      Value obj = eval(*callee.a[0], st);
      if (obj.t == Value::T::Str || obj.t == Value::T::List ||
          (obj.t == Value::T::Dict && !obj.namespace_)) {
        Args args = eval_args(e, st);
        return method(obj, callee.name, args);
      }
    }
    Value f = eval(callee, st);
    if (f.t != Value::T::Func) {
      if (f.is_undefined())
        fail(fmt::format("'{}' is undefined (not a function this interpreter provides)",
                         describe_expr(callee)));
      fail(fmt::format("'{}' object is not callable", type_name(f)));
    }
    Args args = eval_args(e, st);
    return (*f.fn)(args);
  }

  // Python methods of str, dict and list that chat templates call.
  static Value method(const Value& obj, const std::string& name, const Args& a) {
    const std::string what = fmt::format("{}.{}()", type_name(obj), name);
    if (obj.t == Value::T::Str) {
      const std::string& s = obj.s;
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        want_args(what, a, 0, 1);
        return Value::str(strip(s, a.get(0, "chars"), name != "rstrip", name != "lstrip"));
      }
      if (name == "upper" || name == "lower") {
        want_args(what, a, 0, 0);
        std::string r = s;
        for (char& c : r)
          c = char(name == "upper" ? std::toupper(static_cast<unsigned char>(c))
                                   : std::tolower(static_cast<unsigned char>(c)));
        return Value::str(r);
      }
      if (name == "title" || name == "capitalize") {
        want_args(what, a, 0, 0);
        return Value::str(name == "title" ? title(s) : capitalize(s));
      }
      if (name == "startswith" || name == "endswith") {
        want_args(what, a, 1, 1);
        const Value& p = a.pos.at(0);
        List pre = p.t == Value::T::List ? *p.list : List{p};
        for (const Value& x : pre) {
          const std::string& q = want_str(what, &x);
          if (q.size() <= s.size() &&
              (name == "startswith" ? s.compare(0, q.size(), q) == 0
                                    : s.compare(s.size() - q.size(), q.size(), q) == 0))
            return Value::boolean(true);
        }
        return Value::boolean(false);
      }
      if (name == "split" || name == "rsplit") {
        want_args(what, a, 0, 2);
        const Value* sep = a.get(0, "sep");
        const Value* maxv = a.get(1, "maxsplit");
        int64_t maxsplit = maxv ? maxv->as_int() : -1;
        if (name == "rsplit" && maxsplit >= 0) fail("unsupported: str.rsplit() with maxsplit");
        return Value::make_list(
            split(s, sep && sep->t != Value::T::None ? &sep->s : nullptr, maxsplit));
      }
      if (name == "replace") {
        want_args(what, a, 2, 3);
        return Value::str(replace(s, want_str(what, a.get(0, "old")),
                                  want_str(what, a.get(1, "new")),
                                  a.get(2, "count") ? a.get(2, "count")->as_int() : -1));
      }
      if (name == "find") {
        want_args(what, a, 1, 1);
        size_t p = s.find(want_str(what, &a.pos.at(0)));
        if (p == std::string::npos) return Value::integer(-1);
        return Value::integer(int64_t(code_point_offsets(s.substr(0, p)).size() - 1));
      }
      if (name == "count") {
        want_args(what, a, 1, 1);
        const std::string& sub = want_str(what, &a.pos.at(0));
        if (sub.empty()) return Value::integer(length(obj) + 1);
        int64_t c = 0;
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++c;
        return Value::integer(c);
      }
      if (name == "join") {
        want_args(what, a, 1, 1);
        std::string r;
        List items = iterate(a.pos.at(0));
        for (size_t k = 0; k < items.size(); ++k) {
          if (items[k].t != Value::T::Str)
            fail(fmt::format("str.join(): item {} is {}, not a string", k, type_name(items[k])));
          r += (k ? s : "") + items[k].s;
        }
        return Value::str(r);
      }
      if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum") {
        want_args(what, a, 0, 0);
        if (s.empty()) return Value::boolean(false);
        for (unsigned char c : s) {
          if (c >= 0x80) fail(fmt::format("unsupported: {} on non-ASCII text", what));
          bool ok = name == "isdigit"   ? std::isdigit(c)
                    : name == "isspace" ? py_space(c)
                    : name == "isalpha" ? std::isalpha(c)
                                        : std::isalnum(c);
          if (!ok) return Value::boolean(false);
        }
        return Value::boolean(true);
      }
    } else if (obj.t == Value::T::Dict) {
      if (name == "items" || name == "keys" || name == "values") {
        want_args(what, a, 0, 0);
        List l;
        for (const auto& [k, v] : *obj.dict)
          l.push_back(name == "items"  ? Value::make_list({Value::str(k), v}, true)
                      : name == "keys" ? Value::str(k)
                                       : v);
        return Value::make_list(std::move(l));
      }
      if (name == "get") {
        want_args(what, a, 1, 2);
        const Value& k = a.pos.at(0);
        if (k.t == Value::T::Str)
          if (const Value* v = obj.find(k.s)) return *v;
        return a.pos.size() > 1 ? a.pos[1] : Value::none();
      }
      if (const Value* v = obj.find(name); v && v->t == Value::T::Func) {
        Args copy = a;
        return (*v->fn)(copy);
      }
    }
    fail(fmt::format("unsupported method {}", what));
  }

  static std::string capitalize(const std::string& s) {
    std::string r = s;
    for (size_t k = 0; k < r.size(); ++k)
      r[k] = char(k == 0 ? std::toupper(static_cast<unsigned char>(r[k]))
                         : std::tolower(static_cast<unsigned char>(r[k])));
    return r;
  }
  static std::string title(const std::string& s) {
    std::string r = s;
    bool prev_alpha = false;
    for (char& c : r) {
      unsigned char u = static_cast<unsigned char>(c);
      c = char(prev_alpha ? std::tolower(u) : std::toupper(u));
      prev_alpha = std::isalpha(u) != 0;
    }
    return r;
  }
  static std::string replace(const std::string& s, const std::string& from, const std::string& to,
                             int64_t count) {
    if (from.empty()) fail("unsupported: replace() with an empty pattern");
    std::string r;
    size_t p = 0;
    for (int64_t n = 0; count < 0 || n < count; ++n) {
      size_t q = s.find(from, p);
      if (q == std::string::npos) break;
      r += s.substr(p, q - p) + to;
      p = q + from.size();
    }
    return r + s.substr(p);
  }
  static List split(const std::string& s, const std::string* sep, int64_t maxsplit) {
    List out;
    if (sep) {
      if (sep->empty()) fail("str.split(): empty separator");
      size_t p = 0;
      for (int64_t n = 0; maxsplit < 0 || n < maxsplit; ++n) {
        size_t q = s.find(*sep, p);
        if (q == std::string::npos) break;
        out.push_back(Value::str(s.substr(p, q - p)));
        p = q + sep->size();
      }
      out.push_back(Value::str(s.substr(p)));
      return out;
    }
    size_t p = 0;
    int64_t n = 0;
    while (true) {
      while (p < s.size() && py_space(s[p])) ++p;
      if (p >= s.size()) break;
      if (maxsplit >= 0 && n == maxsplit) {
        size_t e = s.size();
        while (e > p && py_space(s[e - 1])) --e;
        out.push_back(Value::str(s.substr(p, e - p)));
        break;
      }
      size_t q = p;
      while (q < s.size() && !py_space(s[q])) ++q;
      out.push_back(Value::str(s.substr(p, q - p)));
      ++n;
      p = q;
    }
    return out;
  }

  // Jinja2's built-in tests (jinja2/tests.py) that templates use.
  bool test(const Expr& e, State& st) const {
    const std::string& t = e.name;
    if (t == "defined" || t == "undefined") {
      bool def = !eval(*e.a[0], st).is_undefined();
      return t == "defined" ? def : !def;
    }
    Value v = eval(*e.a[0], st);
    Args a = eval_args(e, st);
    auto arg = [&](size_t k) -> const Value& {
      if (k >= a.pos.size()) fail(fmt::format("test '{}' needs an argument", t));
      return a.pos[k];
    };
    if (t == "none") return v.t == Value::T::None;
    if (t == "boolean") return v.t == Value::T::Bool;
    if (t == "true") return v.t == Value::T::Bool && v.b;
    if (t == "false") return v.t == Value::T::Bool && !v.b;
    if (t == "integer") return v.t == Value::T::Int;
    if (t == "float") return v.t == Value::T::Float;
    if (t == "number") return v.is_number();
    if (t == "string") return v.t == Value::T::Str;
    if (t == "mapping") return v.t == Value::T::Dict;
    if (t == "iterable")
      return v.t == Value::T::Str || v.t == Value::T::List || v.t == Value::T::Dict ||
             v.is_undefined();
    if (t == "sequence")  // has __len__ and __getitem__, which jinja2.Undefined also has
      return v.t == Value::T::Str || v.t == Value::T::List || v.t == Value::T::Dict ||
             v.is_undefined();
    if (t == "callable") return v.t == Value::T::Func;
    if (t == "lower" || t == "upper") {
      if (v.t != Value::T::Str) return false;
      bool any = false;
      for (unsigned char c : v.s) {
        if (std::isalpha(c)) any = true;
        if (t == "lower" ? std::isupper(c) : std::islower(c)) return false;
      }
      return any;
    }
    if (t == "odd" || t == "even") {
      if (v.t != Value::T::Int) fail(fmt::format("test '{}' needs an integer", t));
      return ((v.i % 2) != 0) == (t == "odd");
    }
    if (t == "divisibleby") {
      const Value& d = arg(0);
      if (v.t != Value::T::Int || d.t != Value::T::Int || d.i == 0)
        fail("test 'divisibleby' needs integers and a non-zero divisor");
      return v.i % d.i == 0;
    }
    if (t == "eq" || t == "equalto" || t == "==") return equals(v, arg(0));
    if (t == "ne" || t == "!=") return !equals(v, arg(0));
    if (t == "lt" || t == "lessthan" || t == "<") return less(v, arg(0));
    if (t == "gt" || t == "greaterthan" || t == ">") return less(arg(0), v);
    if (t == "le" || t == "<=") return !less(arg(0), v);
    if (t == "ge" || t == ">=") return !less(v, arg(0));
    if (t == "in") return contains(arg(0), v);
    if (t == "sameas") {
      const Value& o = arg(0);
      if (v.t != o.t) return false;
      if (v.t == Value::T::None || v.t == Value::T::Undefined) return true;
      if (v.t == Value::T::Bool) return v.b == o.b;
      return equals(v, o) && (v.t == Value::T::Int || v.list == o.list || v.dict == o.dict);
    }
    fail(fmt::format("unknown test '{}'", t));
  }

  // Jinja2's built-in filters (jinja2/filters.py) that templates use; tojson as transformers.
  Value filter(const Expr& e, State& st) const {
    const std::string& f = e.name;
    Value v = eval(*e.a[0], st);
    Args a = eval_args(e, st);
    const std::string what = "filter '" + f + "'";
    auto need_str = [&]() -> const std::string& {
      if (v.t != Value::T::Str) v = Value::str(py_str(v));
      return v.s;
    };
    if (f == "default" || f == "d") {
      want_args(what, a, 0, 2);
      const Value* b = a.get(1, "boolean");
      bool use = v.is_undefined() || (b && truthy(*b) && !truthy(v));
      if (!use) return v;
      const Value* dv = a.get(0, "default_value");
      return dv ? *dv : Value::str("");
    }
    if (f == "trim") {
      want_args(what, a, 0, 1);
      return Value::str(strip(need_str(), a.get(0, "chars"), true, true));
    }
    if (f == "upper" || f == "lower" || f == "capitalize") {
      want_args(what, a, 0, 0);
      return method(Value::str(need_str()), f, a);
    }
    if (f == "title") {  // jinja2's do_title: words start after whitespace, - ( { [ <
      want_args(what, a, 0, 0);
      std::string r = need_str();
      bool start = true;
      for (char& c : r) {
        unsigned char u = static_cast<unsigned char>(c);
        c = char(start ? std::toupper(u) : std::tolower(u));
        start = py_space(u) || u == '-' || u == '(' || u == '{' || u == '[' || u == '<';
      }
      return Value::str(r);
    }
    if (f == "length" || f == "count") {
      want_args(what, a, 0, 0);
      return Value::integer(length(v));
    }
    if (f == "string") {
      want_args(what, a, 0, 0);
      return Value::str(py_str(v));
    }
    if (f == "safe") return v;
    if (f == "tojson") {
      want_args(what, a, 0, 4);
      for (const auto& [k, x] : a.kw)
        if (k != "indent" && k != "separators" && k != "sort_keys" && k != "ensure_ascii")
          fail(fmt::format("tojson(): unknown argument '{}'", k));
      const Value* ind = a.get(0, "indent");
      const Value* ea = a.get(99, "ensure_ascii");
      if (ea && truthy(*ea)) fail("unsupported: tojson(ensure_ascii=True)");
      int indent = -1;
      if (ind && ind->t != Value::T::None) {
        if (ind->t != Value::T::Int || ind->i < 0 || ind->i > 64)
          fail("tojson(indent=...) must be an integer in [0, 64]");
        indent = int(ind->i);
      }
      std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
      if (const Value* sep = a.get(99, "separators"); sep && sep->t != Value::T::None) {
        if (sep->t != Value::T::List || sep->list->size() != 2 ||
            (*sep->list)[0].t != Value::T::Str || (*sep->list)[1].t != Value::T::Str)
          fail("tojson(separators=...) must be a pair of strings");
        item_sep = (*sep->list)[0].s;
        key_sep = (*sep->list)[1].s;
      }
      const Value* sk = a.get(99, "sort_keys");
      std::string out;
      dump_json(v, out, indent, 0, item_sep, key_sep, sk && truthy(*sk));
      return Value::str(out);
    }
    if (f == "join") {
      want_args(what, a, 0, 2);
      if (a.get(1, "attribute")) fail("unsupported: join(attribute=...)");
      const Value* d = a.get(0, "d");
      std::string sep = d ? py_str(*d) : "", out;
      List items = iterate(v);
      for (size_t k = 0; k < items.size(); ++k) out += (k ? sep : "") + py_str(items[k]);
      return Value::str(out);
    }
    if (f == "items") {
      want_args(what, a, 0, 0);
      if (v.is_undefined()) return Value::make_list();
      if (v.t != Value::T::Dict)
        fail(fmt::format("filter 'items' needs a mapping, got {}", type_name(v)));
      return method(v, "items", a);
    }
    if (f == "list") {
      want_args(what, a, 0, 0);
      return Value::make_list(iterate(v));
    }
    if (f == "first" || f == "last") {
      want_args(what, a, 0, 0);
      List items = iterate(v);
      if (items.empty()) return Value::undefined(f);
      return f == "first" ? items.front() : items.back();
    }
    if (f == "reverse") {
      want_args(what, a, 0, 0);
      if (v.t == Value::T::Str) {
        List cs = iterate(v);
        std::string r;
        for (auto it = cs.rbegin(); it != cs.rend(); ++it) r += it->s;
        return Value::str(r);
      }
      List items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::make_list(std::move(items));
    }
    if (f == "replace") {
      want_args(what, a, 2, 3);
      return method(Value::str(need_str()), "replace", a);
    }
    if (f == "int") {
      want_args(what, a, 0, 1);
      const Value* dflt = a.get(0, "default");
      if (v.t == Value::T::Int) return v;
      if (v.t == Value::T::Bool) return Value::integer(v.b);
      if (v.t == Value::T::Float) return Value::integer(int64_t(v.f));
      if (v.t == Value::T::Str) {
        std::string s = strip(v.s, nullptr, true, true);
        int64_t x = 0;
        auto r = std::from_chars(s.data(), s.data() + s.size(), x);
        if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty())
          return Value::integer(x);
        try {  // jinja2's do_int falls back to int(float(value))
          size_t used = 0;
          double d = std::stod(s, &used);
          if (used == s.size() && std::isfinite(d) && std::fabs(d) < 9.2e18)
            return Value::integer(int64_t(d));
        } catch (const std::exception&) {
        }
      }
      return dflt ? *dflt : Value::integer(0);
    }
    if (f == "float") {
      want_args(what, a, 0, 1);
      if (v.is_number()) return Value::real(v.as_double());
      if (v.t == Value::T::Str) {
        try {
          size_t used = 0;
          std::string s = strip(v.s, nullptr, true, true);
          double x = std::stod(s, &used);
          if (used == s.size()) return Value::real(x);
        } catch (const std::exception&) {
        }
      }
      const Value* dflt = a.get(0, "default");
      return dflt ? *dflt : Value::real(0);
    }
    if (f == "abs") {
      want_args(what, a, 0, 0);
      if (!v.is_number()) fail(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
      return v.t == Value::T::Float
                 ? Value::real(std::fabs(v.f))
                 : Value::integer(v.as_int() < 0 ? checked(0, v.as_int(), '-') : v.as_int());
    }
    if (f == "selectattr" || f == "rejectattr") {
      if (a.pos.empty() || a.pos[0].t != Value::T::Str)
        fail(fmt::format("{} needs an attribute name", what));
      List out;
      for (const Value& it : iterate(v)) {
        const Value* x = it.find(a.pos[0].s);
        Value val = x ? *x : Value::undefined(a.pos[0].s);
        bool ok;
        if (a.pos.size() == 1) {
          ok = truthy(val);
        } else {
          // Build a test node on the fly: `val is <test>(args...)`.
          Expr te;
          te.k = Expr::K::Test;
          te.name = want_str(what, &a.pos[1]);
          auto lit = std::make_unique<Expr>();
          lit->k = Expr::K::Literal;
          lit->lit = val;
          te.a.push_back(std::move(lit));
          for (size_t k = 2; k < a.pos.size(); ++k) {
            auto al = std::make_unique<Expr>();
            al->k = Expr::K::Literal;
            al->lit = a.pos[k];
            te.a.push_back(std::move(al));
          }
          ok = test(te, st);
        }
        if (ok == (f == "selectattr")) out.push_back(it);
      }
      return Value::make_list(std::move(out));
    }
    if (f == "map") {
      List out;
      const Value* attr = a.get(99, "attribute");
      for (const Value& it : iterate(v)) {
        if (attr) {
          const Value* x = it.find(want_str(what, attr));
          out.push_back(
              x ? *x : (a.get(99, "default") ? *a.get(99, "default") : Value::undefined(attr->s)));
        } else {
          if (a.pos.empty()) fail("map() needs a filter name or attribute=");
          Expr fe;
          fe.k = Expr::K::Filter;
          fe.name = want_str(what, &a.pos[0]);
          auto lit = std::make_unique<Expr>();
          lit->k = Expr::K::Literal;
          lit->lit = it;
          fe.a.push_back(std::move(lit));
          for (size_t k = 1; k < a.pos.size(); ++k) {
            auto al = std::make_unique<Expr>();
            al->k = Expr::K::Literal;
            al->lit = a.pos[k];
            fe.a.push_back(std::move(al));
          }
          out.push_back(filter(fe, st));
        }
      }
      return Value::make_list(std::move(out));
    }
    fail(fmt::format("unknown filter '{}'", f));
  }

  static std::shared_ptr<Frame> globals(bool strftime_now) {
    auto g = std::make_shared<Frame>();
    (*g)["raise_exception"] = Value::func([](Args& a) -> Value {
      throw RenderError{a.pos.empty() ? std::string() : py_str(a.pos[0]), true};
    });
    (*g)["range"] = Value::func([](Args& a) {
      if (a.pos.empty() || a.pos.size() > 3) fail("range() takes 1 to 3 arguments");
      for (const Value& x : a.pos)
        if (x.t != Value::T::Int) fail("range() arguments must be integers");
      int64_t start = 0, stop, step = 1;
      if (a.pos.size() == 1)
        stop = a.pos[0].i;
      else
        start = a.pos[0].i, stop = a.pos[1].i;
      if (a.pos.size() == 3) step = a.pos[2].i;
      if (step == 0) fail("range() arg 3 must not be zero");
      List l;
      for (int64_t k = start; step > 0 ? k < stop : k > stop;) {
        if (l.size() >= 1000000) fail("range() longer than 1000000 items");
        l.push_back(Value::integer(k));
        if (__builtin_add_overflow(k, step, &k)) break;  // past INT64 range: past stop too
      }
      return Value::make_list(std::move(l));
    });
    (*g)["namespace"] = Value::func([](Args& a) {
      if (!a.pos.empty()) fail("unsupported: namespace() with positional arguments");
      Value ns = Value::make_dict(Dict(a.kw.begin(), a.kw.end()));
      ns.namespace_ = true;
      return ns;
    });
    (*g)["dict"] = Value::func([](Args& a) {
      if (!a.pos.empty()) fail("unsupported: dict() with positional arguments");
      return Value::make_dict(Dict(a.kw.begin(), a.kw.end()));
    });
    if (strftime_now)
      (*g)["strftime_now"] = Value::func([](Args& a) {
        if (a.pos.size() != 1 || a.pos[0].t != Value::T::Str)
          fail("strftime_now() takes one format string");
        std::time_t now = std::time(nullptr);
        std::tm tm{};
        localtime_r(&now, &tm);
        char buf[256];
        size_t n = std::strftime(buf, sizeof buf, a.pos[0].s.c_str(), &tm);
        return Value::str(std::string(buf, n));
      });
    return g;
  }
};

ChatTemplate::ChatTemplate(const std::string& source, std::string origin)
    : impl_(std::make_unique<Impl>()) {
  impl_->origin = std::move(origin);
  // jinja2's lexer first splits on \r\n, \r and \n, joins with \n and, without
  // keep_trailing_newline (transformers leaves it off), drops one final newline.
  std::string src;
  src.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      src += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      src += source[k];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  try {
    Lexer lx(src);
    Parser p(lx.run());
    impl_->body = p.parse();
  } catch (const RenderError& e) {
    throw ChatTemplateError(fmt::format("{}: {}", impl_->origin, e.message), e.message, false);
  }
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context,
                                 const RenderOptions& opt) const {
  if (!context.is_object())
    throw ChatTemplateError(impl_->origin + ": the template context must be a JSON object",
                            "context is not an object", false);
  std::string out;
  try {
    Impl::State st;
    int macro_depth = 0;
    st.macro_depth = &macro_depth;
    int64_t steps = 0;
    st.steps = &steps;
    if (opt.max_steps < 1)
      throw ChatTemplateError(
          fmt::format("{}: RenderOptions::max_steps must be at least 1, found {}", impl_->origin,
                      opt.max_steps),
          "bad max_steps", false);
    st.max_steps = opt.max_steps;
    st.frames.push_back(Impl::globals(opt.strftime_now));
    auto vars = std::make_shared<Impl::Frame>();
    for (const auto& [k, v] : context.items()) (*vars)[k] = from_json(v);
    st.frames.push_back(vars);
    st.out = &out;
    impl_->exec_body(impl_->body, st);
  } catch (const RenderError& e) {
    if (e.raised)
      throw ChatTemplateError(
          fmt::format("{}: the chat template raised an error: {}", impl_->origin, e.message),
          e.message, true);
    throw ChatTemplateError(fmt::format("{}: {}", impl_->origin, e.message), e.message, false);
  }
  return out;
}

nlohmann::ordered_json chat_template_context(const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt,
                                             const std::string& bos_token,
                                             const std::string& eos_token) {
  ojson msgs = ojson::array();
  for (const auto& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
  ojson c = {{"messages", msgs},
             {"tools", nullptr},
             {"documents", nullptr},
             {"add_generation_prompt", add_generation_prompt}};
  if (!bos_token.empty()) c["bos_token"] = bos_token;
  if (!eos_token.empty()) c["eos_token"] = eos_token;
  return c;
}

ChatPrompt render_chat_prompt(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt) {
  ChatPrompt p;
  std::string tmpl = tok.chat_template();
  if (tmpl.empty()) {
    const int32_t start = tok.token_to_id("<|im_start|>"), end = tok.token_to_id("<|im_end|>");
    MINFER_CHECK(start >= 0 && end >= 0 && tok.is_special(start) && tok.is_special(end),
                 "{}: the model has no chat template (tokenizer_config.json 'chat_template' or "
                 "GGUF 'tokenizer.chat_template') and no ChatML special tokens; chat needs one",
                 tok.origin());
    tmpl = kChatMLTemplate;
    p.chatml_default = true;
  }
  const std::string bos = tok.bos_id() >= 0 ? tok.id_to_token(tok.bos_id()) : "";
  const std::string eos = tok.eos_id() >= 0 ? tok.id_to_token(tok.eos_id()) : "";
  ChatTemplate t(tmpl, p.chatml_default ? std::string("ChatML default template")
                                        : tok.origin() + " chat template");
  p.text = t.render(chat_template_context(messages, add_generation_prompt, bos, eos));
  const auto& prefix = tok.special_prefix();
  if (!bos.empty() && !prefix.empty() && prefix.front() == tok.bos_id() &&
      p.text.compare(0, bos.size(), bos) == 0)
    p.text.erase(0, bos.size());
  p.ids = tok.encode(p.text, true);
  return p;
}

std::vector<int32_t> chat_stop_ids(const Tokenizer& tok) {
  return tok.eog_ids();
}

}  // namespace minfer
