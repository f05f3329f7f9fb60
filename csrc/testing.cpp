// camdrop_kernels._native_testing: hooks into the stages for the tests, never in the product. Built
// only as its own extension, with -DCAMDROP_TESTING (setup.py), from the stage sources it tests.
//
//   uniform(seed, offset) -> U(seed, offset) of SPEC.md (philox.h)
//   top_n(values, n) -> ([indices of the n top entries, ascending], element visits made): the
//       ranking on one row (ranking.h), which also checks that the build's channel path (nth_key,
//       then take_top's numbering) agrees with the marks
//   info() -> {"openmp", "avx2", "barrier"}: what the runtime lookup found (threads.cpp)
#if !defined(CAMDROP_TESTING)
#error "testing.cpp is the _native_testing extension only (built with -DCAMDROP_TESTING)"
#endif

#include "py.h"

#include <cstdlib>

#include "dlpack.h"
#include "order_keys.h"
#include "philox.h"
#include "ranking.h"
#include "threads.h"

namespace camdrop {
namespace {

PyObject *py_uniform(PyObject *, PyObject *args) {
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "KK", &seed, &offset)) return nullptr;
    return PyFloat_FromDouble((double)philox_uniform(seed, offset));
}

// The build's channel path on keys ``key`` (n < L, 32 n > L): false unless take_top's ranks are
// the marks' entries in index order.
template <typename Key>
bool take_top_agrees(const Key *key, int64_t L, int64_t n, int64_t *cand, const uint8_t *mark, int32_t *slot) {
    Visits ignored;
    int64_t need_eq;
    const Key t = nth_key(key, L, n, reinterpret_cast<Key *>(cand), &need_eq, ignored);
    const int64_t j = take_top(key, L, t, need_eq, slot, slot + L); // slot + L: chan_row, L + 8 entries
    bool bad = j != n;
    for (int64_t k = 0, r = 0; k < L; ++k) {
        bad |= (slot[k] >= 0) != (mark[k] != 0);
        if (slot[k] < 0) continue;
        bad |= slot[k] != r || slot[L + r] != k;
        ++r;
    }
    return !bad;
}

PyObject *py_top_n(PyObject *, PyObject *args) {
    PyObject *o_v;
    long long n;
    if (!PyArg_ParseTuple(args, "OL", &o_v, &n)) return nullptr;
    View v;
    if (get_view(o_v, "values", &v)) return raise_error();
    if (v.ndim != 1 || v.type > kF64 || !is_contiguous(v))
        return PyErr_Format(PyExc_ValueError, "values must be a contiguous 1-D float tensor");
    const int64_t L = v.shape[0];
    if (n < 1 || n > L) return PyErr_Format(PyExc_ValueError, "n must be in [1, %lld]", (long long)L);
    uint64_t *key = static_cast<uint64_t *>(std::malloc(sizeof(uint64_t) * (size_t)L + 8));
    int64_t *heap = static_cast<int64_t *>(std::malloc(sizeof(int64_t) * (size_t)L));
    uint8_t *mark = static_cast<uint8_t *>(std::malloc((size_t)L));
    int32_t *slot = static_cast<int32_t *>(std::malloc(sizeof(int32_t) * (size_t)(2 * L + 8)));
    PyObject *result = nullptr;
    if (!key || !heap || !mark || !slot) {
        PyErr_NoMemory();
    } else {
        Visits visits;
        const int bits = row_keys(v.data, v.type, 0, L, key);
        top_n(key, bits, L, n, heap, mark, visits);
        const bool agrees = !(n < L && 32 * n > L) ||
                            (bits == 32 ? take_top_agrees(reinterpret_cast<const uint32_t *>(key), L, n, heap, mark, slot)
                                        : take_top_agrees(key, L, n, heap, mark, slot));
        if (!agrees) {
            PyErr_Format(PyExc_RuntimeError, "take_top disagrees with top_n (n = %lld)", n);
        } else if (PyObject *list = PyList_New(0)) {
            bool ok = true;
            for (int64_t k = 0; ok && k < L; ++k) {
                if (!mark[k]) continue;
                PyObject *item = PyLong_FromLongLong(k);
                ok = item && PyList_Append(list, item) == 0;
                Py_XDECREF(item);
            }
            if (ok) result = Py_BuildValue("(NK)", list, (unsigned long long)visits.n);
            else Py_DECREF(list);
        }
    }
    std::free(key);
    std::free(heap);
    std::free(mark);
    std::free(slot);
    return result;
}

PyObject *py_info(PyObject *, PyObject *) {
    return Py_BuildValue("{s:O,s:O,s:O}", "openmp", pool_available() ? Py_True : Py_False, "avx2",
                         have_avx2 ? Py_True : Py_False, "barrier", pool_has_barrier() ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"uniform", py_uniform, METH_VARARGS, "U(seed, offset) of SPEC.md."},
    {"top_n", py_top_n, METH_VARARGS, "The ranking of steps 1-2 on one row, with its element-visit count."},
    {"info", py_info, METH_NOARGS, "What the runtime lookup found: torch's OpenMP pool (and its barrier), AVX2."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native_testing",
                      "Test hooks into the native CPU kernels (csrc/testing.cpp); not part of the product.", -1,
                      methods};

} // namespace
} // namespace camdrop

PyMODINIT_FUNC PyInit__native_testing(void) {
    camdrop::init_runtime();
    return PyModule_Create(&camdrop::module);
}
