// The Python extensions' side of errors.h: a recorded error raised as Python's exception.
#include "py.h"

#include "errors.h"

namespace camdrop {

PyObject *raise_error() {
    const Error &e = last_error();
    if (e.kind == Err::Memory) return PyErr_NoMemory();
    PyErr_SetString(e.kind == Err::Type ? PyExc_TypeError : PyExc_ValueError, e.message);
    return nullptr;
}

} // namespace camdrop
