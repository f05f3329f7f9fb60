// Python.h first, as the C API asks, for the translation units that raise Python exceptions.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace camdrop {

// Sets exc with a printf-style message and returns -1 (the checks' failure value).
int fail(PyObject *exc, const char *format, ...);

} // namespace camdrop
