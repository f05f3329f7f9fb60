// Tensors handed to the Python extensions as DLPack capsules (torch.utils.dlpack.to_dlpack), read
// into checked Views (views.h).
#pragma once

#include "py.h"

#include "views.h"

namespace camdrop {

// Reads an unconsumed DLPack capsule (v0.8 "dltensor" or v1.x "dltensor_versioned") into v and
// checks everything View promises (common.h). -1 with a TypeError/ValueError record naming ``name``.
int get_view(PyObject *obj, const char *name, View *v);

} // namespace camdrop
