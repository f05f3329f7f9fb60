// camdrop_kernels._C: the registered ops' CPU kernels and their autograd, in C++ (the schema is
// defined once, in camdrop_kernels/ops.py; this file registers implementations for it).
//
// Why C++ here: a call through torch's dispatcher into a Python kernel, with a Python autograd
// wrapper, costs tens of microseconds of host time per layer; the same call into these kernels
// costs a few, so a tiny CamDrop call costs about what F.dropout does. The kernels check their
// inputs as ops.py's Python kernels do (the same rules and messages), hand the native stages
// (csrc/*.cpp, shared with the torch-free _native extension) checked views, and translate the
// stages' error records into c10 exceptions (ValueError/TypeError in Python).
//
// The one autograd definition (as ops.py's, in C++): for a given state the output is linear in x,
// so the backward of camdrop and camdrop_apply is camdrop_apply on dy (whose own backward gives
// double backward); camdrop_apply_ with x in the graph is the out-of-place apply copied into x.
//
// Backend overrides (``camdrop_kernels.backends.using``: the plain-torch or Triton-interpreter
// kernels on CPU tensors, for tests and debugging) set a per-thread flag here; the CPU kernels
// then hand the call to the Python kernels, registered as the ``_python_*`` twin ops.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>

#include "../errors.h"
#include "../forward.h"
#include "../threads.h"
#include "../views.h"

namespace camdrop {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Six = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Five = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

thread_local bool python_kernels = false; // a backend override is active in this thread

[[noreturn]] void raise_record() {
    const Error &e = last_error();
    if (e.kind == Err::Type) TORCH_CHECK_TYPE(false, "camdrop_kernels op: ", e.message);
    TORCH_CHECK_VALUE(false, "camdrop_kernels op: ", e.message);
}

// -- options: Options.key of camdrop_kernels/options.py ----------------------------------------
// "rank|block_size|top_pixels|top_channels|block_shape|normalize|gamma_mode|gamma_scale", a top
// count as "-" (default), "i<int>" or "f<float>".
constexpr long long kBlockSizeLimit = 1LL << 62; // options.BLOCK_SIZE_LIMIT: Python caps block sizes there

struct Top {
    char kind; // '-', 'i' or 'f'
    long long count;
    double fraction;
};

struct Options {
    int rank;
    long long block_size;
    Top pixels, channels;
    bool diamond, eligible;
    int normalize;
    double gamma_scale;
};

// The key is accepted only in the spelling Python writes ("%r" of its numbers), so that this
// kernel, the Python kernels and the fake (meta) kernels accept exactly the same keys: an int with
// no sign, spaces or leading zeros; a float as Python's repr (the shortest round-trip digits, fixed
// notation for decimal exponents in (-4, 16], else d.ddde+XX).
bool parse_int(const std::string &s, long long *out) {
    if (s.empty() || s.size() > 19) return false;
    char *end = nullptr;
    errno = 0;
    *out = std::strtoll(s.c_str(), &end, 10);
    return errno == 0 && end == s.c_str() + s.size() && std::to_string(*out) == s;
}

std::string python_repr(double v) {
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific); // shortest round trip
    std::string sci(buf, r.ptr);                                                       // [-]d[.ddd]e(+|-)XX
    std::string sign;
    if (!sci.empty() && sci[0] == '-') {
        sign = "-";
        sci.erase(0, 1);
    }
    const size_t e = sci.find('e');
    if (e == std::string::npos) return sign + sci; // inf, nan
    std::string digits = sci.substr(0, e);
    if (digits.size() > 1) digits.erase(1, 1); // the '.'
    const int exponent = std::atoi(sci.c_str() + e + 1);
    const int decpt = exponent + 1; // value = 0.digits * 10**decpt
    const int n = (int)digits.size();
    if (decpt <= -4 || decpt > 16) {
        std::string mantissa = digits.substr(0, 1) + (n > 1 ? "." + digits.substr(1) : "");
        std::string exp = std::to_string(exponent < 0 ? -exponent : exponent);
        if (exp.size() < 2) exp = "0" + exp;
        return sign + mantissa + (exponent < 0 ? "e-" : "e+") + exp;
    }
    if (decpt <= 0) return sign + "0." + std::string(-decpt, '0') + digits;
    if (decpt < n) return sign + digits.substr(0, decpt) + "." + digits.substr(decpt);
    return sign + digits + std::string(decpt - n, '0') + ".0";
}

bool parse_float(const std::string &s, double *out) {
    if (s.empty() || s.size() > 40) return false;
    char *end = nullptr;
    *out = std::strtod(s.c_str(), &end);
    return end == s.c_str() + s.size() && python_repr(*out) == s;
}

bool parse_top(const std::string &s, Top *t) {
    if (s == "-") {
        *t = {'-', 0, 0.0};
        return true;
    }
    if (s.size() < 2) return false;
    if (s[0] == 'i') return parse_int(s.substr(1), &t->count) && t->count >= 1 && (t->kind = 'i');
    if (s[0] == 'f') {
        if (!parse_float(s.substr(1), &t->fraction) || !(t->fraction > 0.0 && t->fraction <= 1.0)) return false;
        t->kind = 'f';
        return true;
    }
    return false;
}

Options decode(c10::string_view key_view) {
    const std::string key(key_view.data(), key_view.size());
    std::string parts[8];
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= key.size() && n < 9; ++i)
        if (i == key.size() || key[i] == '|') {
            if (n < 8) parts[n] = key.substr(start, i - start);
            ++n;
            start = i + 1;
        }
    Options o{};
    long long rank = 0;
    bool ok = n == 8 && parse_int(parts[0], &rank) && rank >= 1 && rank <= 3 && parse_int(parts[1], &o.block_size) &&
              o.block_size >= 1 && o.block_size <= kBlockSizeLimit && parse_top(parts[2], &o.pixels) && parse_top(parts[3], &o.channels) &&
              (parts[4] == "square" || parts[4] == "diamond") &&
              (parts[5] == "batch" || parts[5] == "sample" || parts[5] == "none") &&
              (parts[6] == "eligible" || parts[6] == "dropblock") && parse_float(parts[7], &o.gamma_scale) &&
              std::isfinite(o.gamma_scale) && o.gamma_scale >= 0.0 &&
              !std::signbit(o.gamma_scale);  // (Python writes +0.0 as "0.0", never "-0.0")
    TORCH_CHECK_VALUE(ok, "options ", key.substr(0, 200), " is not a valid Options.key");
    o.rank = (int)rank;
    o.diamond = parts[4] == "diamond";
    o.normalize = parts[5] == "batch" ? kNormalizeBatch : parts[5] == "sample" ? kNormalizeSample : kNormalizeNone;
    o.eligible = parts[6] == "eligible";
    return o;
}

// options.resolve_count: None -> default; a fraction f -> max(1, floor(f * total)) (one float64
// product, as Python's); an int -> itself; then clamped to [1, total].
long long resolve(const Top &t, long long total, long long fallback) {
    long long count = t.kind == '-' ? fallback : t.kind == 'i' ? t.count : (long long)std::floor(t.fraction * (double)total);
    if (t.kind == 'f' && count < 1) count = 1;
    if (count > total) count = total;
    return count < 1 ? 1 : count;
}

long long top_channels(const Options &o, long long C) { return resolve(o.channels, C, std::max(1LL, C / 8)); }

long long top_pixels(const Options &o, at::IntArrayRef spatial) {
    long long P = 1, area = 1;
    for (int64_t s : spatial) {
        P *= s;
        area *= std::max<long long>(1, std::min<long long>(o.block_size, s));
    }
    return resolve(o.pixels, P, std::max(1LL, P / area));
}

// -- checks (ops.py's checks.py, the same rules and messages) ------------------------------------
bool is_float(const Tensor &t) {
    const auto s = t.scalar_type();
    return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

void check_x(const Tensor &x) {
    TORCH_CHECK_TYPE(is_float(x), "camdrop_kernels op: x must be a float16/bfloat16/float32/float64 tensor");
    TORCH_CHECK_TYPE(x.layout() == at::kStrided, "camdrop_kernels op: x must be a dense (strided) tensor; got layout ",
                     x.layout());
    TORCH_CHECK_VALUE(x.dim() >= 3 && x.dim() <= 5, "camdrop_kernels op: x must be (N, C, *S) with 1 to 3 spatial "
                      "axes; got shape ", x.sizes());
}

void check_scalar(const Tensor &t, const char *name, at::ScalarType dtype, const Tensor &x) {
    TORCH_CHECK_TYPE(t.scalar_type() == dtype && t.numel() == 1, "camdrop_kernels op: ", name, " must be a one-element ",
                     dtype, " tensor; got ", t.scalar_type(), " of shape ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == x.device() || t.device().is_cpu(), "camdrop_kernels op: ", name,
                      " must be on x's device (", x.device(), ") or the CPU; got ", t.device());
}

Options check_state_inputs(const Tensor &x, const Tensor &cam, const Tensor &alpha, const Tensor &seed,
                           const Tensor &drop_prob, c10::string_view options) {
    check_x(x);
    const Options o = decode(options);
    TORCH_CHECK_VALUE(o.rank == x.dim() - 2, "camdrop_kernels op: options are for ", o.rank, "-D maps but x has ",
                      x.dim() - 2, " spatial axes");
    std::vector<int64_t> cam_shape = {x.size(0)};
    for (int64_t d = 2; d < x.dim(); ++d) cam_shape.push_back(x.size(d));
    const std::vector<int64_t> alpha_shape = {x.size(0), x.size(1)};
    const std::pair<const char *, const Tensor *> named[] = {{"cam", &cam}, {"alpha", &alpha}};
    for (int k = 0; k < 2; ++k) {
        const char *name = named[k].first;
        const Tensor &t = *named[k].second;
        TORCH_CHECK_TYPE(is_float(t), "camdrop_kernels op: ", name, " must be a floating-point tensor");
        TORCH_CHECK_TYPE(t.layout() == at::kStrided, "camdrop_kernels op: ", name,
                         " must be a dense (strided) tensor; got layout ", t.layout());
        const auto &want = k == 0 ? cam_shape : alpha_shape;
        TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(want), "camdrop_kernels op: ", name, " must have shape ",
                          at::IntArrayRef(want), "; got ", t.sizes());
        TORCH_CHECK_VALUE(t.device() == x.device(), "camdrop_kernels op: ", name, " must be on x's device (",
                          x.device(), "); got ", t.device());
    }
    check_scalar(seed, "seed", at::kLong, x);
    check_scalar(drop_prob, "drop_prob", at::kDouble, x);
    return o;
}

void check_apply_inputs(const Tensor &x, const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    check_x(x);
    const int64_t N = x.size(0), C = x.size(1);
    int64_t P = 1;
    for (int64_t d = 2; d < x.dim(); ++d) P *= x.size(d);
    const int64_t words = (P + 31) / 32;
    const auto cdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const std::tuple<const char *, const Tensor *, at::ScalarType> named[] = {
        {"slots", &slots, at::kInt}, {"bits", &bits, at::kInt}, {"scale", &scale, cdt}};
    for (const auto &[name, t, dtype] : named)
        TORCH_CHECK_TYPE(t->scalar_type() == dtype && t->layout() == at::kStrided, "camdrop_kernels op: ", name,
                         " must be a dense ", dtype, " tensor");
    TORCH_CHECK_VALUE(slots.dim() == 2 && slots.size(0) == N && slots.size(1) == C, "camdrop_kernels op: slots must "
                      "have shape (", N, ", ", C, "); got ", slots.sizes());
    TORCH_CHECK_VALUE(bits.dim() == 3 && bits.size(0) == N && bits.size(2) == words, "camdrop_kernels op: bits must "
                      "have shape (", N, ", n', ", words, "); got ", bits.sizes());
    TORCH_CHECK_VALUE(scale.dim() == 1 && scale.size(0) == N, "camdrop_kernels op: scale must have shape (", N,
                      ",); got ", scale.sizes());
    for (const auto &[name, t, dtype] : named) {
        TORCH_CHECK_VALUE(t->device() == x.device(), "camdrop_kernels op: ", name, " must be on x's device (",
                          x.device(), "); got ", t->device());
        TORCH_CHECK_VALUE(t->is_contiguous(), "camdrop_kernels op: ", name, " must be contiguous");
    }
}

// checks.readable: memory the stages can read as laid out. A zero tensor (no storage) becomes real
// zeros, a negative view is resolved, a misaligned pointer copied to aligned memory.
Tensor readable(const Tensor &t) {
    if (!t.numel()) return t;
    if (t._is_zerotensor()) return at::zeros(t.sizes(), t.options());
    Tensor r = t.is_neg() ? t.resolve_neg() : t;
    if (reinterpret_cast<uintptr_t>(r.data_ptr()) % (uintptr_t)r.element_size()) r = r.clone();
    return r;
}

void check_state_memory(const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    const std::pair<const char *, const Tensor *> named[] = {{"slots", &slots}, {"bits", &bits}, {"scale", &scale}};
    for (const auto &[name, t] : named)
        TORCH_CHECK_VALUE(!t->numel() || (!t->_is_zerotensor() && !t->is_neg() && t->data_ptr() &&
                                          reinterpret_cast<uintptr_t>(t->data_ptr()) % t->element_size() == 0),
                          "camdrop_kernels op: ", name, " must be an ordinary tensor with its own aligned memory (not a "
                          "zero tensor, a negative view or a misaligned buffer)");
}

int dtype_code(at::ScalarType s) {
    switch (s) {
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kInt: return kI32;
    case at::kLong: return kI64;
    default: return kOther;
    }
}

View view_of(const Tensor &t, const char *name) {
    View v;
    const RawTensor raw = {t.numel() ? t.data_ptr() : nullptr, dtype_code(t.scalar_type()), (int)t.element_size(),
                           (int)t.dim(), t.sizes().data(), t.strides().data(), 0, 0};
    if (make_view(raw, name, &v)) raise_record();
    return v;
}

BuildParams params_of(const Options &o, const Tensor &x) {
    BuildParams p;
    p.block_size = o.block_size;
    p.diamond = o.diamond;
    p.n_pix = top_pixels(o, x.sizes().slice(2));
    p.n_chan = top_channels(o, x.size(1));
    p.eligible = o.eligible;
    p.gamma_scale = o.gamma_scale;
    p.normalize = o.normalize;
    p.threads = std::max(1, std::min(at::get_num_threads(), 4096));
    return p;
}

Five allocate(const Tensor &x, const Options &o) {
    const int64_t N = x.size(0), C = x.size(1);
    int64_t P = 1;
    for (int64_t d = 2; d < x.dim(); ++d) P *= x.size(d);
    const auto i32 = x.options().dtype(at::kInt);
    return {at::empty({N, C}, i32), at::empty({N, top_channels(o, C), (P + 31) / 32}, i32),
            at::empty({N}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat)),
            at::empty({N}, x.options().dtype(at::kLong)), at::empty({N}, x.options().dtype(at::kFloat))};
}

Five empty_state(Five out) {
    std::get<0>(out).fill_(-1);
    std::get<1>(out).zero_();
    std::get<2>(out).fill_(1.0);
    std::get<3>(out).zero_();
    std::get<4>(out).zero_();
    return out;
}

// Steps 1-7 (``y`` undefined) or 1-8 into ``y``.
void run_native(const Tensor &x, const Tensor &y, const Tensor &cam, const Tensor &alpha, const Tensor &seed,
                const Tensor &drop_prob, const Options &o, const Five &out) {
    const BuildParams p = params_of(o, x);
    const Tensor c = readable(cam).contiguous(), a = readable(alpha).contiguous();
    BuildViews v;
    v.cam = view_of(c, "cam");
    v.alpha = view_of(a, "alpha");
    v.seed = view_of(seed, "seed");
    v.drop_prob = view_of(drop_prob, "drop_prob");
    v.slots = view_of(std::get<0>(out), "slots");
    v.bits = view_of(std::get<1>(out), "bits");
    v.scale = view_of(std::get<2>(out), "scale");
    v.dropped = view_of(std::get<3>(out), "dropped");
    v.rate = view_of(std::get<4>(out), "rate");
    int rc;
    if (y.defined()) {
        ApplyCtx ctx{};
        ctx.x = view_of(x, "x");
        ctx.y = view_of(y, "y");
        rc = forward_views(ctx, v, p);
    } else {
        rc = build_views(v, p);
    }
    if (rc) raise_record();
}

void run_apply(const Tensor &x, const Tensor &y, const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    ApplyCtx ctx{};
    ctx.x = view_of(x, "x");
    ctx.y = view_of(y, "y");
    if (apply_views(ctx, view_of(slots, "slots"), view_of(bits, "bits"), view_of(scale, "scale"),
                    std::max(1, std::min(at::get_num_threads(), 4096))))
        raise_record();
}

c10::OperatorHandle twin(const char *name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// -- CPU kernels ----------------------------------------------------------------------------------
Six camdrop_cpu(const Tensor &x, const Tensor &cam, const Tensor &alpha, const Tensor &seed, const Tensor &drop_prob,
                c10::string_view options) {
    if (python_kernels) {
        static auto op = twin("camdrop_kernels::_python_camdrop").typed<Six(const Tensor &, const Tensor &,
                                                                             const Tensor &, const Tensor &,
                                                                             const Tensor &, c10::string_view)>();
        return op.call(x, cam, alpha, seed, drop_prob, options);
    }
    const Options o = check_state_inputs(x, cam, alpha, seed, drop_prob, options);
    Tensor y = at::empty_like(x);
    Five out = allocate(x, o);
    if (!x.numel()) out = empty_state(out);
    else run_native(readable(x), y, cam, alpha, seed, drop_prob, o, out);
    return {y, std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out), std::get<4>(out)};
}

Five camdrop_state_cpu(const Tensor &x, const Tensor &cam, const Tensor &alpha, const Tensor &seed,
                       const Tensor &drop_prob, c10::string_view options) {
    if (python_kernels) {
        static auto op = twin("camdrop_kernels::_python_camdrop_state").typed<Five(const Tensor &, const Tensor &,
                                                                                     const Tensor &, const Tensor &,
                                                                                     const Tensor &, c10::string_view)>();
        return op.call(x, cam, alpha, seed, drop_prob, options);
    }
    const Options o = check_state_inputs(x, cam, alpha, seed, drop_prob, options);
    Five out = allocate(x, o);
    if (!x.numel()) return empty_state(out);
    run_native(readable(x), Tensor(), cam, alpha, seed, drop_prob, o, out);
    return out;
}

Tensor camdrop_apply_cpu(const Tensor &x, const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    if (python_kernels) {
        static auto op = twin("camdrop_kernels::_python_camdrop_apply")
                             .typed<Tensor(const Tensor &, const Tensor &, const Tensor &, const Tensor &)>();
        return op.call(x, slots, bits, scale);
    }
    check_apply_inputs(x, slots, bits, scale);
    check_state_memory(slots, bits, scale);
    Tensor y = at::empty_like(x);
    if (x.numel()) run_apply(readable(x), y, slots, bits, scale);
    return y;
}

void camdrop_apply_inplace_cpu(const Tensor &x, const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    if (python_kernels) {
        static auto op = twin("camdrop_kernels::_python_camdrop_apply_")
                             .typed<void(const Tensor &, const Tensor &, const Tensor &, const Tensor &)>();
        op.call(x, slots, bits, scale);
        return;
    }
    check_apply_inputs(x, slots, bits, scale);
    check_state_memory(slots, bits, scale);
    TORCH_CHECK_VALUE(!x._is_zerotensor(), "camdrop_kernels op: x is an efficient zero tensor, which cannot be "
                      "written in place");
    TORCH_CHECK(!x.is_inference() || c10::InferenceMode::is_enabled(), "camdrop_kernels op: inplace update to "
                "inference tensor x outside InferenceMode is not allowed");
    if (x.numel()) {
        const auto overlap = at::has_internal_overlap(x);
        TORCH_CHECK_VALUE(overlap == at::MemOverlap::No ||
                              (overlap == at::MemOverlap::TooHard && non_overlapping(view_of(x, "x"))),
                          "camdrop_kernels op: x has overlapping elements (an expanded or as_strided tensor) and "
                          "cannot be written in place");
        const Tensor source = readable(x);
        if (source.is_same(x)) {
            run_apply(x, x, slots, bits, scale);
        } else { // (x's memory cannot be handed over as it is, e.g. misaligned: write through a copy)
            Tensor y = at::empty_like(source);
            run_apply(source, y, slots, bits, scale);
            x.copy_(y);
        }
    }
    // As torch's in-place ops do: a tensor autograd saved and that this call changed fails loudly.
    torch::autograd::increment_version(x);
}

// -- autograd: the one definition ----------------------------------------------------------------
Tensor apply_op(const Tensor &x, const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("camdrop_kernels::camdrop_apply", "")
                         .typed<Tensor(const Tensor &, const Tensor &, const Tensor &, const Tensor &)>();
    return op.call(x, slots, bits, scale);
}

struct CamDropFunction : public torch::autograd::Function<CamDropFunction> {
    static variable_list forward(AutogradContext *ctx, const Tensor &x, const Tensor &cam, const Tensor &alpha,
                                 const Tensor &seed, const Tensor &drop_prob, c10::string_view options) {
        at::AutoDispatchBelowADInplaceOrView guard;
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("camdrop_kernels::camdrop", "")
                             .typed<Six(const Tensor &, const Tensor &, const Tensor &, const Tensor &,
                                        const Tensor &, c10::string_view)>();
        auto [y, slots, bits, scale, dropped, rate] = op.call(x, cam, alpha, seed, drop_prob, options);
        ctx->save_for_backward({slots, bits, scale});
        ctx->mark_non_differentiable({slots, bits, scale, dropped, rate});
        ctx->set_materialize_grads(false); // (no zero gradients made for the statistics)
        return {y, slots, bits, scale, dropped, rate};
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        Tensor dx = grads[0].defined() ? apply_op(grads[0], saved[0], saved[1], saved[2]) : Tensor();
        return {dx, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
};

struct ApplyFunction : public torch::autograd::Function<ApplyFunction> {
    static Tensor forward(AutogradContext *ctx, const Tensor &x, const Tensor &slots, const Tensor &bits,
                          const Tensor &scale) {
        at::AutoDispatchBelowADInplaceOrView guard;
        ctx->save_for_backward({slots, bits, scale});
        return apply_op(x, slots, bits, scale);
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        Tensor dx = grads[0].defined() ? apply_op(grads[0], saved[0], saved[1], saved[2]) : Tensor();
        return {dx, Tensor(), Tensor(), Tensor()};
    }
};

Six camdrop_autograd(const Tensor &x, const Tensor &cam, const Tensor &alpha, const Tensor &seed,
                     const Tensor &drop_prob, c10::string_view options) {
    auto out = CamDropFunction::apply(x, cam, alpha, seed, drop_prob, options);
    return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

Tensor camdrop_apply_autograd(const Tensor &x, const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    return ApplyFunction::apply(x, slots, bits, scale);
}

void camdrop_apply_inplace_autograd(const Tensor &x, const Tensor &slots, const Tensor &bits, const Tensor &scale) {
    if (at::GradMode::is_enabled() && x.requires_grad()) {
        const_cast<Tensor &>(x).copy_(ApplyFunction::apply(x, slots, bits, scale));
        return;
    }
    at::AutoDispatchBelowAutograd guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("camdrop_kernels::camdrop_apply_", "")
                         .typed<void(const Tensor &, const Tensor &, const Tensor &, const Tensor &)>();
    op.call(x, slots, bits, scale);
}

TORCH_LIBRARY_IMPL(camdrop_kernels, CPU, m) {
    m.impl("camdrop", camdrop_cpu);
    m.impl("camdrop_state", camdrop_state_cpu);
    m.impl("camdrop_apply", camdrop_apply_cpu);
    m.impl("camdrop_apply_", camdrop_apply_inplace_cpu);
}

TORCH_LIBRARY_IMPL(camdrop_kernels, Autograd, m) {
    m.impl("camdrop", camdrop_autograd);
    m.impl("camdrop_apply", camdrop_apply_autograd);
    m.impl("camdrop_apply_", camdrop_apply_inplace_autograd);
}

// -- the Python module: the override switch -------------------------------------------------------
PyObject *set_python_kernels(PyObject *, PyObject *arg) {
    const int on = PyObject_IsTrue(arg);
    if (on < 0) return nullptr;
    const bool previous = python_kernels;
    python_kernels = on != 0;
    return PyBool_FromLong(previous);
}

PyMethodDef methods[] = {
    {"set_python_kernels", set_python_kernels, METH_O,
     "Hand this thread's CPU calls to the Python kernels (backend overrides); returns the previous setting."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                      "camdrop_kernels' op kernels for CPU tensors and their autograd, in C++ (see csrc/torch/ops.cpp).",
                      -1, methods};

} // namespace
} // namespace camdrop

PyMODINIT_FUNC PyInit__C(void) {
    camdrop::init_runtime();
    return PyModule_Create(&camdrop::module);
}
