// Tensors arrive as DLPack capsules (torch.utils.dlpack.to_dlpack): reading them into Views and the
// checks on them. Each check sets a Python exception naming the argument and returns -1.
#pragma once

#include "py.h"

#include "common.h"

namespace camdrop {

// Reads an unconsumed DLPack capsule (v0.8 "dltensor" or v1.x "dltensor_versioned") into v and
// checks everything View promises (common.h). -1 with a TypeError/ValueError naming ``name``.
int get_view(PyObject *obj, const char *name, View *v);

int check_type(const View &v, const char *name, int type);

// Row-major contiguous (size-1 dims may have any stride; a tensor without elements is contiguous,
// as torch says).
bool is_contiguous(const View &v);

// A contiguous tensor of ``type`` with exactly the given shape.
int check_dense(const View &v, const char *name, int type, int ndim, const int64_t *shape);

// No two elements of v share memory.
bool non_overlapping(const View &v);

// Outputs (views[first_output..n)) must be writable and share no memory with any other argument;
// ``same`` is the index of an input the first output may alias exactly (in place: x and y), or -1.
int check_outputs(View *const *views, const char *const *names, int n, int first_output, int same);

} // namespace camdrop
