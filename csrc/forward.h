// forward: build and apply in one call and, on torch's pool, one parallel region.
#pragma once

#include "py.h"

#include "build.h"

namespace camdrop {

// o = (x, y, cam, alpha, seed, drop_prob, slots, bits, scale, dropped, rate).
PyObject *run_forward(PyObject *const *o, const BuildParams &p);

} // namespace camdrop
