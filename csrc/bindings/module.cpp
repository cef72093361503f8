// binllm._core: the only file that knows Python.
//
// Each function validates its arguments (dtype, shape, strides, d), naming
// the argument in the error, allocates the outputs, releases the GIL, and
// calls the plain C++ core. No silent casts: a wrong dtype is an error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "../core/core.h"

namespace py = pybind11;
using namespace binllm;

#ifndef BINLLM_VERSION
#define BINLLM_VERSION "0.0.0"
#endif

namespace {

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

std::string describe(const py::array& a) { return py::str(a.dtype()).cast<std::string>() + " " + shape_str(a); }

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

py::array as_array(const py::handle& obj, const char* name, const char* expected) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(name) + " must be " + expected + "; got " +
               py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

// Scores are int32 (and d - 2 * popcount must not overflow), so d stays below 2**31.
constexpr int64_t kMaxD = 2147483647;

void check_d(int64_t d) {
  if (d < 1) value_error("d must be a positive number of dimensions; got " + std::to_string(d));
  if (d > kMaxD)
    value_error("d must be <= 2147483647 (scores are int32); got " + std::to_string(d));
}

// a * b for output sizes, or a ValueError naming what is too large (a, b >= 0).
int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  if (b != 0 && a > INT64_MAX / b) value_error(std::string(what) + " is too large to allocate");
  return a * b;
}

// The byte range [lo, hi) an array's elements occupy (lo == hi when empty).
struct Extent {
  uintptr_t lo = 0, hi = 0;
};

Extent extent_of(const py::array& a) {
  Extent e;
  auto base = reinterpret_cast<uintptr_t>(a.data());
  intptr_t lo = 0, hi = 0;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (a.shape(i) == 0) return e;
    const intptr_t span = static_cast<intptr_t>(a.shape(i) - 1) * a.strides(i);
    (span < 0 ? lo : hi) += span;
  }
  e.lo = base + lo;
  e.hi = base + hi + a.itemsize();
  return e;
}

bool overlap(const Extent& x, const Extent& y) { return x.lo < x.hi && y.lo < y.hi && x.lo < y.hi && y.lo < x.hi; }

void check_native(const py::array& a, const char* name) {
  if (!a.dtype().attr("isnative").cast<bool>())
    value_error(std::string(name) + " must have native byte order; got " + describe(a) +
                " (convert with x.astype(x.dtype.newbyteorder('=')))");
}

// A code matrix: 2-D uint8 (n, nbytes(d)), bytes of a row contiguous, zero tail bits.
struct Codes {
  const uint8_t* ptr;
  int64_t n, ld;
  Extent ext;
};

// Checks everything but the tail bits (cheap, no scan over rows).
Codes code_shape(const py::handle& obj, const char* name, int64_t d) {
  check_d(d);
  const int64_t nb = nbytes(d);
  const std::string expected = "a 2-D uint8 array of packed codes (n, " + std::to_string(nb) + ")";
  py::array a = as_array(obj, name, expected.c_str());
  if (a.dtype().kind() != 'u' || a.itemsize() != 1 || a.ndim() != 2)
    type_error(std::string(name) + " must be " + expected + "; got " + describe(a));
  if (a.shape(1) != nb)
    value_error(std::string(name) + " has " + std::to_string(a.shape(1)) + " bytes per row but d=" +
                std::to_string(d) + " needs " + std::to_string(nb));
  if (a.shape(0) > 0 && nb > 1 && a.strides(1) != 1)
    value_error(std::string(name) + " must have contiguous bytes within a row (use numpy.ascontiguousarray)");
  return Codes{static_cast<const uint8_t*>(a.data()), a.shape(0), a.shape(0) > 1 ? a.strides(0) : nb, extent_of(a)};
}

// Zero tail bits. A broadcast (stride-0) matrix repeats one row, which is scanned once.
void check_tail(const Codes& c, const char* name, int64_t d) {
  const uint8_t mask = tail_mask(d);
  if (mask == 0xFF) return;
  const int64_t nb = nbytes(d), rows = c.ld == 0 ? std::min<int64_t>(c.n, 1) : c.n;
  for (int64_t r = 0; r < rows; ++r)
    if (c.ptr[r * c.ld + nb - 1] & ~mask)
      value_error(std::string(name) + " row " + std::to_string(r) + " has bits set past dimension d=" +
                  std::to_string(d) + " (tail bits of packed codes must be zero)");
}

Codes check_codes(const py::handle& obj, const char* name, int64_t d) {
  const Codes c = code_shape(obj, name, d);
  check_tail(c, name, d);
  return c;
}

template <class T>
py::array_t<T> new_array(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

// ------------------------------------------------------------------ packing

py::array pack_signs_py(const py::handle& xobj, bool bfloat16) {
  const char* expected =
      "a 2-D float16/float32/float64 array (n, d), or a 2-D 16-bit integer view of bfloat16 with bfloat16=True";
  py::array x = as_array(xobj, "x", expected);
  FloatType type;
  const char kind = x.dtype().kind();
  if (bfloat16) {
    if ((kind != 'u' && kind != 'i') || x.itemsize() != 2)
      type_error(std::string("x must be ") + expected + "; got " + describe(x));
    type = FloatType::bf16;
  } else if (kind == 'f' && x.itemsize() == 4) {
    type = FloatType::f32;
  } else if (kind == 'f' && x.itemsize() == 8) {
    type = FloatType::f64;
  } else if (kind == 'f' && x.itemsize() == 2) {
    type = FloatType::f16;
  } else {
    type_error(std::string("x must be ") + expected + "; got " + describe(x));
  }
  if (x.ndim() != 2) type_error(std::string("x must be ") + expected + "; got " + describe(x));
  check_native(x, "x");
  const int64_t n = x.shape(0), d = x.shape(1), es = x.itemsize();
  if (d < 1) value_error("x must have at least one column (d >= 1); got " + shape_str(x));
  if (x.strides(0) % es || x.strides(1) % es) value_error("x has strides that are not whole elements");
  const int64_t s0 = x.strides(0) / es, s1 = x.strides(1) / es;
  auto out = new_array<uint8_t>({n, nbytes(d)});
  const void* src = x.data();
  uint8_t* dst = out.mutable_data();
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = pack_signs(type, src, n, d, s0, s1, dst, nbytes(d));
  }
  if (bad >= 0)
    value_error("x contains NaN at row " + std::to_string(bad / d) + ", column " + std::to_string(bad % d) +
                " (sign of NaN is undefined)");
  return out;
}

py::array unpack_py(const py::handle& codes, int64_t d, const std::string& dtype) {
  const Codes c = check_codes(codes, "codes", d);
  checked_mul(checked_mul(c.n, d, "the unpacked array"), 8, "the unpacked array");
  UnpackType t;
  py::array out;
  if (dtype == "float32") t = UnpackType::f32, out = new_array<float>({c.n, d});
  else if (dtype == "float64") t = UnpackType::f64, out = new_array<double>({c.n, d});
  else if (dtype == "float16") t = UnpackType::f16, out = py::array(py::dtype("float16"), std::vector<py::ssize_t>{c.n, d});
  else if (dtype == "bfloat16") t = UnpackType::bf16, out = new_array<uint16_t>({c.n, d});
  else if (dtype == "int8") t = UnpackType::i8, out = new_array<int8_t>({c.n, d});
  else if (dtype == "bits") t = UnpackType::bits, out = new_array<uint8_t>({c.n, d});
  else
    value_error("dtype must be one of 'float32', 'float64', 'float16', 'bfloat16', 'int8', 'bits'; got '" + dtype + "'");
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    unpack(c.ptr, c.n, d, c.ld, t, dst);
  }
  return out;
}

// ------------------------------------------------------------------ scores

ScoreKind parse_kind(const std::string& kind) {
  if (kind == "dot") return ScoreKind::dot;
  if (kind == "hamming") return ScoreKind::hamming;
  value_error("kind must be 'dot' or 'hamming'; got '" + kind + "'");
}

py::array score_pairs_py(const py::handle& a, const py::handle& b, int64_t d, const std::string& kind) {
  const ScoreKind k = parse_kind(kind);
  const Codes ca = code_shape(a, "a", d), cb = code_shape(b, "b", d);
  if (ca.n != cb.n)
    value_error("a and b must have the same number of rows for row-aligned scores; got " + std::to_string(ca.n) +
                " and " + std::to_string(cb.n));
  check_tail(ca, "a", d);
  check_tail(cb, "b", d);
  auto out = new_array<int32_t>({ca.n});
  int32_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    score_pairs(k, ca.ptr, ca.ld, cb.ptr, cb.ld, ca.n, d, dst);
  }
  return out;
}

// An output buffer the caller owns: C-contiguous, writable, (n, m) of `dtype`.
// out must not share memory with the inputs: the kernels read codes while
// writing scores, so an overlap would give silently wrong results.
template <class T>
py::array_t<T> output_matrix(const py::object& out, int64_t n, int64_t m, const char* dtype, const Codes& a_in,
                             const Codes& b_in) {
  if (out.is_none()) return new_array<T>({n, m});
  py::array a = as_array(out, "out", "a C-contiguous writable numpy array");
  check_native(a, "out");
  if (!py::isinstance<py::array_t<T>>(a) || a.dtype().kind() != py::dtype::of<T>().kind() ||
      a.itemsize() != int64_t(sizeof(T)))
    type_error(std::string("out must be ") + dtype + " to match out_dtype; got " + describe(a));
  if (a.ndim() != 2 || a.shape(0) != n || a.shape(1) != m)
    value_error("out must have shape (" + std::to_string(n) + ", " + std::to_string(m) + "); got " + shape_str(a));
  if (!(a.flags() & py::array::c_style) || !a.writeable())
    value_error("out must be C-contiguous and writable");
  const Extent e = extent_of(a);
  if (overlap(e, a_in.ext)) value_error("out overlaps a (out must not share memory with the inputs)");
  if (overlap(e, b_in.ext)) value_error("out overlaps b (out must not share memory with the inputs)");
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

py::array score_all_py(const py::handle& a, const py::handle& b, int64_t d, const std::string& kind,
                       const std::string& out_dtype, const py::object& out) {
  const ScoreKind k = parse_kind(kind);
  const Codes ca = check_codes(a, "a", d), cb = check_codes(b, "b", d);
  if (out_dtype == "int32") {
    auto res = output_matrix<int32_t>(out, ca.n, cb.n, "int32", ca, cb);
    int32_t* dst = res.mutable_data();
    py::gil_scoped_release nogil;
    score_all_i32(k, ca.ptr, ca.ld, ca.n, cb.ptr, cb.ld, cb.n, d, dst);
    return std::move(res);
  }
  if (out_dtype == "int16") {
    if (d > 32767) value_error("out_dtype='int16' needs d <= 32767; got d=" + std::to_string(d));
    auto res = output_matrix<int16_t>(out, ca.n, cb.n, "int16", ca, cb);
    int16_t* dst = res.mutable_data();
    py::gil_scoped_release nogil;
    score_all_i16(k, ca.ptr, ca.ld, ca.n, cb.ptr, cb.ld, cb.n, d, dst);
    return std::move(res);
  }
  value_error("out_dtype must be 'int32' or 'int16'; got '" + out_dtype + "'");
}

py::tuple topk_py(const py::handle& queries, const py::handle& items, int64_t d, int64_t k) {
  // Every check that needs no scan over rows comes first (a broadcast view can have 2**40 rows).
  const Codes q = code_shape(queries, "queries", d), it = code_shape(items, "items", d);
  if (d > 65535) value_error("d must be <= 65535 for topk; got " + std::to_string(d));
  if (k < 1) value_error("k must be >= 1; got " + std::to_string(k));
  if (k > it.n)
    value_error("k must be <= the number of items (" + std::to_string(it.n) + "); got k=" + std::to_string(k));
  if (it.n > int64_t(UINT32_MAX)) value_error("items must have fewer than 2**32 rows");
  checked_mul(q.n, k, "the top-k output");
  check_tail(q, "queries", d);
  check_tail(it, "items", d);
  auto scores = new_array<int32_t>({q.n, k});
  auto idx = new_array<int64_t>({q.n, k});
  int32_t* sp = scores.mutable_data();
  int64_t* ip = idx.mutable_data();
  {
    py::gil_scoped_release nogil;
    topk_dot(q.ptr, q.ld, q.n, it.ptr, it.ld, it.n, d, k, sp, ip);
  }
  return py::make_tuple(scores, idx);
}

// ------------------------------------------------------------------ text

py::list rows_to_list(const char* buf, int64_t n, int64_t width, const int64_t* lengths) {
  py::list out(n);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t len = lengths ? lengths[r] : width;
    PyObject* s = PyUnicode_New(len, 127);
    if (!s) throw py::error_already_set();
    std::memcpy(PyUnicode_DATA(s), buf + r * width, static_cast<size_t>(len));
    PyList_SET_ITEM(out.ptr(), r, s);
  }
  return out;
}

void check_out(const std::string& out) {
  if (out != "list" && out != "array" && out != "buffer")
    value_error("out must be 'list', 'array' or 'buffer'; got '" + out + "'");
}

py::object format_bits_py(const py::handle& codes, int64_t d, const std::string& out) {
  check_out(out);
  const Codes c = check_codes(codes, "codes", d);
  checked_mul(c.n, d, "the text output (n * d characters)");
  if (out == "array") {
    py::array arr(py::dtype("S" + std::to_string(d)), std::vector<py::ssize_t>{c.n});
    char* dst = static_cast<char*>(arr.mutable_data());
    py::gil_scoped_release nogil;
    format_bits(c.ptr, c.n, d, c.ld, dst);
    return std::move(arr);
  }
  auto buf = new_array<uint8_t>({c.n * d});
  char* dst = reinterpret_cast<char*>(buf.mutable_data());
  {
    py::gil_scoped_release nogil;
    format_bits(c.ptr, c.n, d, c.ld, dst);
  }
  if (out == "list") return rows_to_list(dst, c.n, d, nullptr);
  auto offsets = new_array<int64_t>({c.n + 1});
  int64_t* op = offsets.mutable_data();
  for (int64_t r = 0; r <= c.n; ++r) op[r] = r * d;
  return py::make_tuple(buf, offsets);
}

py::object format_dotted_py(const py::handle& codes, int64_t d, const std::string& out) {
  check_out(out);
  const Codes c = check_codes(codes, "codes", d);
  const int64_t width = dotted_width(d);
  checked_mul(checked_mul(c.n, width, "the text output (n * width characters)"), 8,
              "the text output (n * width characters)");
  std::vector<int64_t> lengths(static_cast<size_t>(c.n));
  if (out == "array") {
    py::array arr(py::dtype("S" + std::to_string(width)), std::vector<py::ssize_t>{c.n});
    char* dst = static_cast<char*>(arr.mutable_data());
    py::gil_scoped_release nogil;
    format_dotted(c.ptr, c.n, d, c.ld, dst, lengths.data());
    return std::move(arr);
  }
  std::vector<char> padded(static_cast<size_t>(c.n * width));
  {
    py::gil_scoped_release nogil;
    format_dotted(c.ptr, c.n, d, c.ld, padded.data(), lengths.data());
  }
  if (out == "list") return rows_to_list(padded.data(), c.n, width, lengths.data());
  auto offsets = new_array<int64_t>({c.n + 1});
  int64_t* op = offsets.mutable_data();
  op[0] = 0;
  for (int64_t r = 0; r < c.n; ++r) op[r + 1] = op[r] + lengths[r];
  auto buf = new_array<uint8_t>({op[c.n]});
  char* bp = reinterpret_cast<char*>(buf.mutable_data());
  {
    py::gil_scoped_release nogil;
    for (int64_t r = 0; r < c.n; ++r) std::memcpy(bp + op[r], padded.data() + r * width, lengths[r]);
  }
  return py::make_tuple(buf, offsets);
}

// Texts as (pointer, length) pairs that stay valid while this object lives:
// it holds a reference to the container and to every list item, so another
// thread that replaces list items while the GIL is released cannot free them.
struct TextRows {
  std::vector<const char*> ptr;
  std::vector<int64_t> len;
  py::object keep;
  std::vector<py::object> items;
  std::string ascii;  // rows of a numpy 'U' array narrowed to bytes
  // Rows that cannot be text codes whatever the parser says (sorted), and why.
  // They point at kInvalidRow, which every parser rejects, so the parser still
  // finds the lowest bad row of either kind.
  std::vector<std::pair<int64_t, const char*>> invalid;
};

constexpr const char* kInvalidRow = "\x80";

void mark_invalid(TextRows& t, int64_t r, const char* why) {
  t.ptr[r] = kInvalidRow;
  t.len[r] = 1;
  t.invalid.emplace_back(r, why);
}

const char* kExpectedTexts = "texts must be a list of str, or a 1-D numpy bytes or str array (dtype 'S' or 'U')";

TextRows collect_texts(const py::handle& texts) {
  TextRows t;
  t.keep = py::reinterpret_borrow<py::object>(texts);
  if (py::isinstance<py::array>(texts)) {
    py::array a = py::reinterpret_borrow<py::array>(texts);
    const char kind = a.dtype().kind();
    if ((kind != 'S' && kind != 'U') || a.ndim() != 1)
      type_error(std::string(kExpectedTexts) + "; got array " + describe(a));
    if (kind == 'U') check_native(a, "texts");
    const int64_t n = a.shape(0), w = a.itemsize(), st = n > 0 ? a.strides(0) : w;
    const char* base = static_cast<const char*>(a.data());
    t.ptr.resize(n);
    t.len.resize(n);
    if (kind == 'S') {
      for (int64_t r = 0; r < n; ++r) {
        const char* p = base + r * st;
        int64_t l = w;
        while (l > 0 && p[l - 1] == 0) --l;  // numpy 'S' pads with NUL
        t.ptr[r] = p;
        t.len[r] = l;
      }
      return t;
    }
    // 'U' holds 4-byte code points; codes are ASCII, so each row narrows to
    // one byte per character, and a row with any other character is invalid.
    const int64_t wc = w / 4;
    t.ascii.resize(static_cast<size_t>(checked_mul(n, wc, "texts")));
    for (int64_t r = 0; r < n; ++r) {
      const char* p = base + r * st;
      char* o = &t.ascii[static_cast<size_t>(r * wc)];
      int64_t l = wc;
      uint32_t cp = 0;
      while (l > 0 && (std::memcpy(&cp, p + 4 * (l - 1), 4), cp == 0)) --l;  // numpy 'U' pads with NUL
      bool ascii = true;
      for (int64_t j = 0; j < l; ++j) {
        std::memcpy(&cp, p + 4 * j, 4);
        ascii &= cp < 128;
        o[j] = static_cast<char>(cp);
      }
      t.ptr[r] = o;
      t.len[r] = l;
      if (!ascii) mark_invalid(t, r, "has non-ASCII characters; codes are ASCII");
    }
    return t;
  }
  if (!PyList_Check(texts.ptr()) && !PyTuple_Check(texts.ptr()))
    type_error(std::string(kExpectedTexts) + "; got " +
               py::str(py::type::of(texts).attr("__name__")).cast<std::string>());
  py::sequence seq = py::reinterpret_borrow<py::sequence>(texts);
  const int64_t n = static_cast<int64_t>(py::len(seq));
  t.ptr.resize(n);
  t.len.resize(n);
  t.items.reserve(n);
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  for (int64_t r = 0; r < n; ++r) {
    PyObject* o = items[r];
    t.items.push_back(py::reinterpret_borrow<py::object>(o));
    Py_ssize_t l = 0;
    if (PyUnicode_Check(o)) {
      const char* p = PyUnicode_AsUTF8AndSize(o, &l);  // cached in the str object, which we hold
      if (!p) {
        PyErr_Clear();  // a lone surrogate: not encodable as UTF-8
        mark_invalid(t, r, "is not valid text (it holds a lone surrogate, which has no UTF-8 form)");
        continue;
      }
      t.ptr[r] = p;
    } else if (PyBytes_Check(o)) {
      t.ptr[r] = PyBytes_AS_STRING(o);
      l = PyBytes_GET_SIZE(o);
    } else {
      type_error("texts[" + std::to_string(r) + "] must be str or bytes; got " +
                 py::str(py::type::of(py::handle(o)).attr("__name__")).cast<std::string>());
    }
    t.len[r] = l;
  }
  return t;
}

std::string excerpt(const char* p, int64_t len) {
  std::string s(p, static_cast<size_t>(std::min<int64_t>(len, 80)));
  return py::repr(py::bytes(s)).cast<std::string>().substr(1) + (len > 80 ? "..." : "");
}

using ParseFn = int64_t (*)(const char* const*, const int64_t*, int64_t, int64_t, uint8_t*, const char**);

py::array parse_py(const py::handle& texts, int64_t d, ParseFn fn, const char* what) {
  check_d(d);
  TextRows t = collect_texts(texts);
  const int64_t n = static_cast<int64_t>(t.ptr.size());
  auto out = new_array<uint8_t>({n, nbytes(d)});
  uint8_t* dst = out.mutable_data();
  const char* err = nullptr;
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = fn(t.ptr.data(), t.len.data(), n, d, dst, &err);
  }
  if (bad < 0) return out;
  for (const auto& inv : t.invalid)
    if (inv.first == bad) value_error("texts[" + std::to_string(bad) + "] " + inv.second);
  value_error("texts[" + std::to_string(bad) + "] is not a valid " + std::to_string(d) + "-dimension " + what +
              " code (" + err + "): " + excerpt(t.ptr[bad], t.len[bad]));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "binllm C++ core: packed +-1 codes (MSB-first), scores, top-k and text forms.";
  m.attr("__version__") = BINLLM_VERSION;

  m.def("pack_signs", &pack_signs_py, py::arg("x"), py::arg("bfloat16") = false);
  m.def("unpack", &unpack_py, py::arg("codes"), py::arg("d"), py::arg("dtype") = "float32");
  m.def("score_pairs", &score_pairs_py, py::arg("a"), py::arg("b"), py::arg("d"), py::arg("kind") = "dot");
  m.def("score_all", &score_all_py, py::arg("a"), py::arg("b"), py::arg("d"), py::arg("kind") = "dot",
        py::arg("out_dtype") = "int32", py::arg("out") = py::none());
  m.def("topk", &topk_py, py::arg("queries"), py::arg("items"), py::arg("d"), py::arg("k"));
  m.def("format_bits", &format_bits_py, py::arg("codes"), py::arg("d"), py::arg("out") = "list");
  m.def("format_dotted", &format_dotted_py, py::arg("codes"), py::arg("d"), py::arg("out") = "list");
  m.def(
      "parse_bits", [](const py::handle& t, int64_t d) { return parse_py(t, d, parse_bits, "bit-string"); },
      py::arg("texts"), py::arg("d"));
  m.def(
      "parse_dotted", [](const py::handle& t, int64_t d) { return parse_py(t, d, parse_dotted, "dotted-decimal"); },
      py::arg("texts"), py::arg("d"));

  m.def("num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("compiled_variants", &compiled_variants);
  m.def("supported_variants", &supported_variants);
  m.def("current_variant", &current_variant);
  m.def(
      "set_variant",
      [](const std::string& name) {
        try {
          set_variant(name);
        } catch (const std::invalid_argument& e) {
          value_error(std::string("name: ") + e.what());
        }
      },
      py::arg("name"));
  m.def("compiler_info", &compiler_info);
  m.def("config_problems", &config_problems);
}
