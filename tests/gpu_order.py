"""Make Triton's interpreter run kernels in a GPU's order, where the order can change a result.

The interpreter scans and reduces with a custom combine function as a sequential left fold, and
executes a store lane by lane, so a kernel that is only right in that order passes here and is
wrong on a card. Installed by conftest for every interpreted test:

- scans run as a Hillis-Steele tree (step d combines lane i - d into lane i, as warp shuffles do):
  a combine that is associative only for some lane orders (a segmented scan whose keys are not
  non-decreasing) gives another answer;
- reductions with a custom combine halve the block (combine the first half with the second);
- a store in which two active lanes write different values to one address fails the test: on a
  GPU which lane wins is undefined.
"""
import numpy as np


def install() -> bool:
    """Patch the interpreter in this process; False where its internals are not the expected ones."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    needed = (("ScanOps", "generic_scan"), ("ReduceOps", "generic_reduce"), ("InterpreterBuilder", "create_masked_store"))
    if not all(hasattr(getattr(interpreter, c, None), m) for c, m in needed):
        return False
    if getattr(interpreter, "_camdrop_gpu_order", False):
        return True
    interpreter.ScanOps.generic_scan = _tree_scan
    interpreter.ReduceOps.generic_reduce = _make_tree_reduce(interpreter.ReduceOps.generic_reduce)
    interpreter.InterpreterBuilder.create_masked_store = _make_checked_store(
        interpreter.InterpreterBuilder.create_masked_store)
    interpreter._camdrop_gpu_order = True
    return True


def _combine(op, left, right, dtypes):
    ret = op.combine_fn.fn(*(op.to_tensor(a, t) for a, t in zip(left, dtypes)),
                           *(op.to_tensor(a, t) for a, t in zip(right, dtypes)))
    ret = ret if isinstance(ret, tuple) else (ret,)
    return [np.asarray(r.handle.data, dtype=a.dtype) for r, a in zip(ret, left)]


def _tree_scan(self, input):
    dtypes = [arg.dtype for arg in input]
    data = [arg.handle.data.copy() for arg in input]
    axis, n = self.axis, data[0].shape[self.axis]
    lanes = np.arange(n).reshape([-1 if i == axis else 1 for i in range(data[0].ndim)])
    d = 1
    while d < n:  # (operands stay full length: interpreter blocks have power-of-two shapes)
        combined = _combine(self, [np.roll(a, d, axis=axis) for a in data], data, dtypes)
        data = [np.where(lanes >= d, c, a) for c, a in zip(combined, data)]
        d *= 2
    return [self.to_tensor(a, t) for a, t in zip(data, dtypes)]


def _make_tree_reduce(sequential):
    def tree_reduce(self, input):
        axis = self.axis
        n = input[0].handle.data.shape[axis] if axis is not None else 0
        if axis is None or n < 2 or n & (n - 1):
            return sequential(self, input)
        dtypes = [arg.dtype for arg in input]
        data = [arg.handle.data for arg in input]
        while data[0].shape[axis] > 1:
            half = data[0].shape[axis] // 2
            first = [np.take(a, np.arange(half), axis=axis) for a in data]
            second = [np.take(a, np.arange(half, 2 * half), axis=axis) for a in data]
            data = _combine(self, first, second, dtypes)
        return [self.to_tensor(a if self.keep_dims else np.squeeze(a, axis), t) for a, t in zip(data, dtypes)]

    return tree_reduce


def _make_checked_store(store):
    def checked_store(self, ptrs, value, mask, *args):
        p, v, m = np.asarray(ptrs.data), np.asarray(value.data), np.asarray(mask.data)
        if p.size > 1:
            p, v = np.broadcast_to(p, m.shape)[m], np.broadcast_to(v, m.shape)[m]
            if p.size > 1:
                bits = v.view(f"u{v.dtype.itemsize}") if v.dtype.itemsize in (1, 2, 4, 8) else v
                order = np.lexsort((bits, p))
                p, bits = p[order], bits[order]
                racy = (p[1:] == p[:-1]) & (bits[1:] != bits[:-1])
                if racy.any():
                    raise AssertionError(f"a store writes {int(racy.sum())} address(es) from lanes with different "
                                         "values: on a GPU which lane wins is undefined")
        return store(self, ptrs, value, mask, *args)

    return checked_store
