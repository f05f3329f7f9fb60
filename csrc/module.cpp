// camdrop_kernels._native: the Python entry points (build, apply, forward). Each parses its
// arguments and hands them to its stage, which checks every one before touching memory.
//
//   build(cam, alpha, seed, drop_prob, slots, bits, scale, dropped, rate,
//         block_size, diamond, top_pixels, top_channels, eligible, gamma_scale, normalize, threads)
//   apply(x, y, slots, bits, scale, threads)
//   forward(x, y, cam, alpha, seed, drop_prob, slots, bits, scale, dropped, rate,
//           block_size, diamond, top_pixels, top_channels, eligible, gamma_scale, normalize, threads)
//
// Tensors are DLPack capsules; the rest Python ints and a float.
#include "py.h"

#include "apply.h"
#include "build.h"
#include "dlpack.h"
#include "forward.h"
#include "threads.h"

namespace camdrop {

namespace {

// Reads the capsules into views (with the GIL), then runs the stage without it.
int read_views(PyObject *const *o, const char *const *names, View *const *views, int n) {
    for (int k = 0; k < n; ++k)
        if (get_view(o[k], names[k], views[k])) return -1;
    return 0;
}

PyObject *py_build(PyObject *, PyObject *args) {
    PyObject *o[9];
    BuildParams p;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOLLLLLdLL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &p.block_size, &p.diamond, &p.n_pix, &p.n_chan, &p.eligible, &p.gamma_scale, &p.normalize,
                          &p.threads))
        return nullptr;
    BuildViews v;
    const char *const names[] = {"cam", "alpha", "seed", "drop_prob", "slots", "bits", "scale", "dropped", "rate"};
    View *const views[] = {&v.cam, &v.alpha, &v.seed, &v.drop_prob, &v.slots, &v.bits, &v.scale, &v.dropped, &v.rate};
    if (read_views(o, names, views, 9)) return raise_error();
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = build_views(v, p);
    Py_END_ALLOW_THREADS
    if (rc) return raise_error();
    Py_RETURN_NONE;
}

PyObject *py_apply(PyObject *, PyObject *args) {
    PyObject *o[5];
    long long threads;
    if (!PyArg_ParseTuple(args, "OOOOOL", &o[0], &o[1], &o[2], &o[3], &o[4], &threads)) return nullptr;
    ApplyCtx a{};
    View slots, bits, scale;
    const char *const names[] = {"x", "y", "slots", "bits", "scale"};
    View *const views[] = {&a.x, &a.y, &slots, &bits, &scale};
    if (read_views(o, names, views, 5)) return raise_error();
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = apply_views(a, slots, bits, scale, threads);
    Py_END_ALLOW_THREADS
    if (rc) return raise_error();
    Py_RETURN_NONE;
}

PyObject *py_forward(PyObject *, PyObject *args) {
    PyObject *o[11];
    BuildParams p;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOLLLLLdLL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &p.block_size, &p.diamond, &p.n_pix, &p.n_chan, &p.eligible, &p.gamma_scale,
                          &p.normalize, &p.threads))
        return nullptr;
    ApplyCtx a{};
    BuildViews v;
    const char *const names[] = {"x", "y", "cam", "alpha", "seed", "drop_prob", "slots", "bits", "scale", "dropped",
                                 "rate"};
    View *const views[] = {&a.x, &a.y, &v.cam, &v.alpha, &v.seed, &v.drop_prob, &v.slots, &v.bits, &v.scale,
                           &v.dropped, &v.rate};
    if (read_views(o, names, views, 11)) return raise_error();
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = forward_views(a, v, p);
    Py_END_ALLOW_THREADS
    if (rc) return raise_error();
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"build", py_build, METH_VARARGS, "Steps 1-7 of SPEC.md for a batch (see csrc/build.h)."},
    {"apply", py_apply, METH_VARARGS, "Step 8: y = +0.0 where dropped, else x * scale (any strides)."},
    {"forward", py_forward, METH_VARARGS,
     "forward(x, y, cam, alpha, seed, p, slots, bits, scale, dropped, rate, ...): build, then apply."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "Native CPU kernels for camdrop_kernels (see csrc/).", -1,
                      methods};

} // namespace
} // namespace camdrop

PyMODINIT_FUNC PyInit__native(void) {
    camdrop::init_runtime();
    return PyModule_Create(&camdrop::module);
}
