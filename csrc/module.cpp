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
#include "forward.h"
#include "threads.h"

namespace camdrop {
namespace {

PyObject *py_build(PyObject *, PyObject *args) {
    PyObject *o[9];
    BuildParams p;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOLLLLLdLL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &p.block_size, &p.diamond, &p.n_pix, &p.n_chan, &p.eligible, &p.gamma_scale, &p.normalize,
                          &p.threads))
        return nullptr;
    return run_build(o, p);
}

PyObject *py_apply(PyObject *, PyObject *args) {
    PyObject *o[5];
    long long threads;
    if (!PyArg_ParseTuple(args, "OOOOOL", &o[0], &o[1], &o[2], &o[3], &o[4], &threads)) return nullptr;
    return run_apply(o, threads);
}

PyObject *py_forward(PyObject *, PyObject *args) {
    PyObject *o[11];
    BuildParams p;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOLLLLLdLL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &p.block_size, &p.diamond, &p.n_pix, &p.n_chan, &p.eligible, &p.gamma_scale,
                          &p.normalize, &p.threads))
        return nullptr;
    return run_forward(o, p);
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
