// Checked views of tensors (View, common.h) and the checks the stages run on them. A binding
// (dlpack.cpp for the Python extensions, torch/ops.cpp for the torch one) describes a tensor as a
// RawTensor; make_view checks it. Each check records an error (errors.h) naming the argument and
// returns -1.
#pragma once

#include "common.h"
#include "errors.h"

namespace camdrop {

// A tensor as its owner describes it: data pointer, dtype, sizes and strides (in elements;
// strides NULL: row-major contiguous), a byte offset to add to the pointer, the read-only flag.
struct RawTensor {
    void *data;
    int type;  // DType
    int esize; // bytes per element
    int ndim;
    const int64_t *shape;
    const int64_t *strides;
    uint64_t byte_offset;
    int read_only;
};

// Checks everything View promises (common.h) and fills v. -1 with a TypeError/ValueError record
// naming ``name``.
int make_view(const RawTensor &t, const char *name, View *v);

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
