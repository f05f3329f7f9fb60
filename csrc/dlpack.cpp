// DLPack capsules read into checked Views (views.h): the Python extensions' way in.
#include "dlpack.h"


namespace camdrop {

// The stable C ABI of dlpack.h (v0.8 and v1.x capsules): only what this file reads.
namespace {

struct DLDevice {
    int32_t device_type;
    int32_t device_id;
};
struct DLDataType {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
};
struct DLTensor {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides; // in elements; NULL: row-major contiguous (DLPack < 1.2)
    uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(DLManagedTensor *);
};
struct DLPackVersion {
    uint32_t major;
    uint32_t minor;
};
struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(DLManagedTensorVersioned *);
    uint64_t flags;
    DLTensor dl_tensor;
};

enum : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4 };
constexpr int32_t kDLCPU = 1;
constexpr uint64_t kReadOnlyFlag = 1; // DLPACK_FLAG_BITMASK_READ_ONLY

int dtype_of(const DLDataType &t) {
    if (t.code == kDLFloat && t.bits == 16) return kF16;
    if (t.code == kDLBfloat && t.bits == 16) return kBF16;
    if (t.code == kDLFloat && t.bits == 32) return kF32;
    if (t.code == kDLFloat && t.bits == 64) return kF64;
    if (t.code == kDLInt && t.bits == 32) return kI32;
    if (t.code == kDLInt && t.bits == 64) return kI64;
    return kOther;
}

} // namespace

int get_view(PyObject *obj, const char *name, View *v) {
    const DLTensor *t = nullptr;
    v->read_only = 0;
    if (PyCapsule_IsValid(obj, "dltensor")) {
        t = &static_cast<DLManagedTensor *>(PyCapsule_GetPointer(obj, "dltensor"))->dl_tensor;
    } else if (PyCapsule_IsValid(obj, "dltensor_versioned")) {
        auto *m = static_cast<DLManagedTensorVersioned *>(PyCapsule_GetPointer(obj, "dltensor_versioned"));
        if (m->version.major != 1)
            return fail(Err::Type, "%s: unsupported DLPack version %u", name, m->version.major);
        v->read_only = (m->flags & kReadOnlyFlag) != 0;
        t = &m->dl_tensor;
    } else {
        return fail(Err::Type, "%s must be a DLPack capsule of a tensor (torch.utils.dlpack.to_dlpack)", name);
    }
    if (t->device.device_type != kDLCPU) return fail(Err::Value, "%s must be a CPU tensor", name);
    if (t->dtype.lanes != 1) return fail(Err::Type, "%s must have a scalar dtype", name);
    if (t->dtype.bits == 0 || t->dtype.bits % 8)
        return fail(Err::Type, "%s has an unsupported dtype (%d bits)", name, (int)t->dtype.bits);
    const RawTensor raw = {t->data, dtype_of(t->dtype), t->dtype.bits / 8, t->ndim, t->shape, t->strides,
                           t->byte_offset, v->read_only};
    return make_view(raw, name, v);
}

} // namespace camdrop
