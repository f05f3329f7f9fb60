// Python.h first, as the C API asks, for the translation units of the Python extensions.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace camdrop {

// Raises this thread's last error record (errors.h) as the matching Python exception; nullptr.
PyObject *raise_error();

} // namespace camdrop
