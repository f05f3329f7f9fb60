// Checked views of tensors, from whatever hands them over (dlpack.cpp: DLPack capsules;
// torch/ops.cpp: at::Tensor), and the checks the stages run on them. No Python here.
#include "views.h"

#include <cstdio>

namespace camdrop {

namespace {
// Element counts and byte spans are kept below 2**62: sums of a few such products stay in int64.
constexpr int64_t kLimit = (int64_t)1 << 62;
}

const char *dtype_name(int type) {
    static const char *const names[] = {"float16", "bfloat16", "float32", "float64", "int32", "int64", "other"};
    return names[type >= kF16 && type <= kOther ? type : kOther];
}

int make_view(const RawTensor &t, const char *name, View *v) {
    v->read_only = t.read_only;
    if (t.ndim < 0 || t.ndim > kMaxDims)
        return fail(Err::Value, "%s has %d dimensions; at most %d are supported", name, (int)t.ndim, kMaxDims);
    if (t.ndim > 0 && !t.shape) return fail(Err::Value, "%s has no shape array", name);
    if (t.esize <= 0) return fail(Err::Type, "%s has an unsupported dtype", name);
    v->type = t.type;
    v->esize = t.esize;
    v->ndim = t.ndim;
    // One pass over the dims: sizes and strides; numel; and the span, (size - 1) * stride summed
    // over the dims: the farthest element from the first. Overflows are noted, and are errors
    // unless some size is 0 (no elements: nothing is ever read).
    int64_t numel = 1, span = 0, expected = 1; // expected: the row-major stride, when DLPack gives none
    bool empty = false, overflow = false, far = false;
    for (int d = t.ndim - 1; d >= 0; --d) {
        const int64_t size = t.shape[d], stride = t.strides ? t.strides[d] : expected;
        if (size < 0) return fail(Err::Value, "%s has a negative size", name);
        if (stride < 0) return fail(Err::Value, "%s has a negative stride", name);
        v->shape[d] = size;
        v->strides[d] = stride;
        int64_t term;
        empty |= size == 0;
        overflow |= __builtin_mul_overflow(numel, size, &numel) || numel > kLimit;
        far |= __builtin_mul_overflow(size - 1, stride, &term) || __builtin_add_overflow(span, term, &span);
        expected = numel; // (only read while it is exact: an overflow is refused below)
    }
    v->numel = empty ? 0 : numel;
    // The data pointer: byte_offset added as an integer (never pointer arithmetic on NULL).
    uintptr_t addr = (uintptr_t)t.data;
    if (addr && __builtin_add_overflow(addr, (uintptr_t)t.byte_offset, &addr))
        return fail(Err::Value, "%s has a byte offset past the address space", name);
    if (!empty) {
        if (overflow) return fail(Err::Value, "%s has more than 2**62 elements", name);
        if (!t.data)
            return fail(Err::Value,
                        "%s has %lld elements but a null data pointer (a tensor without storage, such as "
                        "torch._efficientzerotensor's: materialise it first)",
                        name, (long long)numel);
        // The span in bytes below 2**62 and inside the address space, so that every index product
        // the kernels form, (index < size) * stride, fits in int64.
        // (kLimit / esize: a shift for a power of 2, every type the kernels read)
        const int64_t max_span = (v->esize & (v->esize - 1)) ? kLimit / v->esize
                                                             : kLimit >> __builtin_ctz((unsigned)v->esize);
        if (far || span >= max_span) return fail(Err::Value, "%s's strides reach past 2**62 bytes", name);
        uintptr_t last;
        if (__builtin_add_overflow(addr, (uintptr_t)((span + 1) * v->esize), &last))
            return fail(Err::Value, "%s's elements reach past the address space", name);
        // Typed loads and stores need the element's alignment (the strides are whole elements, so
        // an aligned first element makes every element aligned). Types no entry point accepts are
        // refused by its type checks instead.
        if (v->type != kOther && (addr & (uintptr_t)(v->esize - 1))) // the known types' sizes are powers of 2
            return fail(Err::Value, "%s's data pointer is not aligned to its %d-byte element size", name,
                        v->esize);
    }
    v->data = reinterpret_cast<char *>(addr);
    return 0;
}


int check_type(const View &v, const char *name, int type) {
    if (v.type != type)
        return fail(Err::Type, "%s must be %s; got %s", name, dtype_name(type), dtype_name(v.type));
    return 0;
}

bool is_contiguous(const View &v) {
    if (v.numel == 0) return true;
    int64_t expected = 1;
    for (int d = v.ndim - 1; d >= 0; --d) {
        if (v.shape[d] != 1 && v.strides[d] != expected) return false;
        expected *= v.shape[d];
    }
    return true;
}

int check_dense(const View &v, const char *name, int type, int ndim, const int64_t *shape) {
    if (check_type(v, name, type)) return -1;
    bool ok = v.ndim == ndim;
    for (int d = 0; ok && d < ndim; ++d) ok = v.shape[d] == shape[d];
    if (!ok) {
        char want[160] = "(", *p = want + 1;
        for (int d = 0; d < ndim && p < want + 120; ++d) // at most 22 characters a size
            p += std::snprintf(p, 24, d ? ", %lld" : "%lld", (long long)shape[d]);
        std::snprintf(p, 4, ")");
        return fail(Err::Value, "%s must have shape %s", name, want);
    }
    if (!is_contiguous(v)) return fail(Err::Value, "%s must be contiguous", name);
    return 0;
}

// Sufficient test: sorted by stride, each stride exceeds the span of the smaller ones, so writing
// every element never writes one location twice. (Spans fit: get_view bounds them.)
bool non_overlapping(const View &v) {
    if (v.numel == 0) return true;
    int order[kMaxDims], n = 0;
    for (int d = 0; d < v.ndim; ++d)
        if (v.shape[d] > 1) order[n++] = d;
    for (int a = 1; a < n; ++a)
        for (int b = a; b > 0 && v.strides[order[b]] < v.strides[order[b - 1]]; --b) {
            int t = order[b];
            order[b] = order[b - 1];
            order[b - 1] = t;
        }
    int64_t span = 0;
    for (int k = 0; k < n; ++k) {
        if (v.strides[order[k]] <= span) return false;
        span += (v.shape[order[k]] - 1) * v.strides[order[k]];
    }
    return true;
}

namespace {

// The bytes [lo, hi) an array's elements occupy (empty for no elements; get_view checked that
// hi does not wrap).
void byte_range(const View &v, uintptr_t *lo, uintptr_t *hi) {
    *lo = *hi = (uintptr_t)v.data;
    if (v.numel == 0) return;
    uint64_t span = 0;
    for (int d = 0; d < v.ndim; ++d) span += (uint64_t)(v.shape[d] - 1) * (uint64_t)v.strides[d];
    *hi = *lo + (uintptr_t)((span + 1) * (uint64_t)v.esize);
}

} // namespace

// A kernel that writes one array while reading another through the same bytes would read what it
// wrote; two outputs over the same bytes would race.
int check_outputs(View *const *views, const char *const *names, int n, int first_output, int same) {
    for (int o = first_output; o < n; ++o) {
        if (views[o]->read_only) return fail(Err::Value, "%s is read-only", names[o]);
        uintptr_t olo, ohi;
        byte_range(*views[o], &olo, &ohi);
        for (int k = 0; k < n; ++k) {
            if (k == o) continue;
            uintptr_t lo, hi;
            byte_range(*views[k], &lo, &hi);
            if (!(olo < hi && lo < ohi)) continue; // disjoint
            if (o == first_output && k == same && views[k]->data == views[o]->data) {
                bool identical = views[k]->ndim == views[o]->ndim;
                for (int d = 0; identical && d < views[k]->ndim; ++d)
                    identical = views[k]->shape[d] == views[o]->shape[d] &&
                                (views[k]->shape[d] == 1 || views[k]->strides[d] == views[o]->strides[d]);
                if (identical) continue; // in place
            }
            return fail(Err::Value, "%s shares memory with %s", names[o], names[k]);
        }
    }
    return 0;
}

} // namespace camdrop
