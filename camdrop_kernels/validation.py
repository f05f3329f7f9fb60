"""Argument checks for the public API: every bad input fails here, at once, by name.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
wrong value) with the argument's name and what was expected. Checks run on Python values
and tensor metadata only (never on tensor data), so they cost microseconds and never
synchronise with a device; under ``torch.compile`` they trace into guards.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Optional, Sequence

import torch

PUBLIC_BACKENDS = ("auto", "torch", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SEED_LIMIT = 2**63
_SPATIAL_NAMES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_CAM_NAMES = {1: "(N, L)", 2: "(N, H, W)", 3: "(N, D, H, W)"}
_FUNCTION_NAMES = {1: "camdrop1d", 2: "camdrop", 3: "camdrop3d"}
_MODULE_NAMES = {1: "CamDrop1d", 2: "CamDrop2d", 3: "CamDrop3d"}


def is_int(value) -> bool:
    return type(value) is int or (isinstance(value, Integral) and not isinstance(value, bool))


def is_real(value) -> bool:
    return type(value) in (float, int) or (isinstance(value, Real) and not isinstance(value, bool))


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_floating_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor; got dtype {value.dtype} "
                        "(a floating-point tensor is expected)")
    return value


def check_rank(rank: int, x, module: bool = False) -> None:
    """x has the rank's dimensions (N, C, *S); the error names the function (or module) to use instead."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != rank + 2:
        names = _MODULE_NAMES if module else _FUNCTION_NAMES
        other = x.dim() - 2
        hint = f" (for {other}-D maps use {names[other]})" if other in names else ""
        raise ValueError(f"x must be {rank + 2}-D {_SPATIAL_NAMES[rank]}; got shape {tuple(x.shape)}{hint}")


def check_inputs(rank: int, x, cam, alpha, module: bool = False) -> torch.Tensor:
    """Check x, cam and alpha against each other; return cam as an (N, *S) view. (Written for speed:
    it runs on every call, so it compares torch.Size objects and devices, and builds messages only
    on failure.)"""
    if not (isinstance(x, torch.Tensor) and isinstance(cam, torch.Tensor) and isinstance(alpha, torch.Tensor)
            and x.dtype in FLOAT_DTYPES and cam.dtype in FLOAT_DTYPES and alpha.dtype in FLOAT_DTYPES):
        for name, t in (("x", x), ("cam", cam), ("alpha", alpha)):
            check_floating_tensor(name, t)
    if x.layout is not torch.strided or cam.layout is not torch.strided or alpha.layout is not torch.strided:
        for name, t in (("x", x), ("cam", cam), ("alpha", alpha)):
            if t.layout is not torch.strided:
                raise TypeError(f"{name} must be a dense (strided) tensor; got layout {t.layout} (use .to_dense())")
    if x.dim() != rank + 2:
        check_rank(rank, x, module)
    shape = x.shape
    if cam.dim() == rank + 2 and cam.shape[1] == 1:
        cam = cam.squeeze(1)
    if cam.shape != shape[:1] + shape[2:] or alpha.shape != shape[:2] or cam.device != x.device \
            or alpha.device != x.device:
        _explain_inputs(rank, x, cam, alpha)
    return cam


def _explain_inputs(rank, x, cam, alpha):
    """The error for inputs that do not fit together, naming the argument and what was expected."""
    N, C = x.shape[0], x.shape[1]
    spatial = tuple(x.shape[2:])
    if cam.dim() != rank + 1 or cam.shape[0] != N:
        want = ", ".join(map(str, (N,) + spatial))
        raise ValueError(f"cam must have shape {_CAM_NAMES[rank]} or with a channel axis of 1 = ({want}) for x of "
                         f"shape {tuple(x.shape)}; got {tuple(cam.shape)}")
    if tuple(cam.shape[1:]) != spatial:
        raise ValueError(
            f"cam's spatial size {tuple(cam.shape[1:])} does not match x's {spatial}: resize the CAM to this "
            "layer's resolution (e.g. F.interpolate), or build it with class_activation_map(x, alpha)")
    if alpha.dim() != 2 or alpha.shape[0] != N or alpha.shape[1] != C:
        raise ValueError(f"alpha must have shape (N, C) = ({N}, {C}); got {tuple(alpha.shape)}")
    for name, t in (("cam", cam), ("alpha", alpha)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: all tensors must share a device")


def check_not_transformed(x: torch.Tensor) -> None:
    """torch.func transforms (vmap, grad, jacrev, ...) wrap tensors in ways the kernels cannot read:
    say so plainly instead of failing deep inside."""
    if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x):
        raise RuntimeError("camdrop does not support torch.func transforms (vmap, grad, jacrev, ...): call it "
                           "outside the transform (e.g. loop over the batch instead of vmap), or use "
                           "torch.autograd for gradients")


def check_probability(name: str, value) -> float:
    if not is_real(value):
        raise TypeError(f"{name} must be a real number in [0, 1]; got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1]; got {value}")
    return value


def check_block_size(value) -> int:
    if not is_int(value):
        raise TypeError(f"block_size must be an int >= 1; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"block_size must be an int >= 1; got {value}")
    return int(value)


def check_top(name: str, value):
    """``top_pixels``/``top_channels``: None, an int >= 1, or a float in (0, 1] (bool is refused)."""
    if value is None:
        return None
    if is_int(value):
        if value < 1:
            raise ValueError(f"{name} must be an int >= 1 or a float in (0, 1]; got {value}")
        return int(value)
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:  # also refuses NaN
            raise ValueError(f"{name} must be an int >= 1 or a float in (0, 1]; got {value}")
        return float(value)  # (a numpy float64 is a float: keep the plain one)
    raise TypeError(f"{name} must be None, an int >= 1 or a float in (0, 1]; got {type(value).__name__}")


def check_gamma_scale(value) -> float:
    if not is_real(value):
        raise TypeError(f"gamma_scale must be a finite real number >= 0; got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < float("inf"):  # also refuses NaN (plain comparisons: torch.compile traces them)
        raise ValueError(f"gamma_scale must be a finite real number >= 0; got {value}")
    # -0.0 + 0.0 is +0.0: one spelling in the options key ("0.0"); -0.0 == 0.0 share a cache entry,
    # so a kept "-0.0" made the key depend on which sign was seen first
    return value + 0.0


def check_seed(value) -> Optional[int]:
    if value is None:
        return None
    if not is_int(value):
        raise TypeError(f"seed must be None or an int in [0, 2**63); got {type(value).__name__}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63); got {value}")
    return int(value)


def check_generator(value, device: torch.device) -> Optional[torch.Generator]:
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be None or a torch.Generator; got {type(value).__name__}")
    if torch.device(value.device).type != device.type:
        raise ValueError(f"generator is on {value.device} but x is on {device}")
    return value


def type_name(value) -> str:
    """The qualified name of value's type ("numpy.bool", "str"), for messages."""
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def check_bool(name: str, value) -> bool:
    """A bool, or a NumPy bool (``np.bool_``: what comparisons of NumPy values give), as a bool."""
    if isinstance(value, bool):
        return value
    cls = type(value)
    if cls.__module__ == "numpy" and cls.__name__ in ("bool", "bool_"):
        return bool(value)
    raise TypeError(f"{name} must be a bool (True or False); got {type_name(value)}")


def check_module(name: str, value) -> None:
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (the model); got {type_name(value)}")


def may_overlap(x: torch.Tensor) -> bool:
    """Could two elements of x share a memory location? torch's own answer where it has one; for
    layouts it finds too hard (``as_strided`` views), a sufficient test of disjointness: the axes
    sorted by stride, each stride reaches past everything the smaller axes span."""
    answer = torch._debug_has_internal_overlap(x)
    if answer != 2:
        return answer == 1
    span = 0
    for size, stride in sorted(((n, abs(s)) for n, s in zip(x.shape, x.stride()) if n > 1), key=lambda a: a[1]):
        if stride <= span:
            return True
        span += (size - 1) * stride
    return False


def check_inplace(x: torch.Tensor) -> None:
    """Refuse what torch's own in-place ops refuse, before any data is written: a leaf that
    requires grad (or a view of one) while grad mode is on, an inference tensor outside inference mode, or memory where several elements share one
    location (an expanded tensor)."""
    compiling = torch.compiler.is_compiling()
    if not compiling and x.is_inference() and not torch.is_inference_mode_enabled():  # (Dynamo cannot trace it)
        raise RuntimeError("camdrop(inplace=True): inplace update to inference tensor outside InferenceMode is not "
                           "allowed; clone it first or run under torch.inference_mode()")
    if x.requires_grad and torch.is_grad_enabled():
        base = x._base
        if x.is_leaf or (base is not None and base.is_leaf and base.requires_grad):
            what = "a leaf Variable" if x.is_leaf else "a view of a leaf Variable"
            raise RuntimeError(
                f"camdrop(inplace=True): {what} that requires grad is being used in an in-place operation; "
                "use inplace=False, run it under torch.no_grad(), or apply it to the output of another op")
    if not compiling and may_overlap(x):
        raise ValueError("camdrop(inplace=True) needs x without overlapping elements (x is expanded or an "
                         "as_strided view whose elements share memory); use inplace=False or x.contiguous()")
    if not compiling and x._is_zerotensor():
        raise ValueError("camdrop(inplace=True): x is an efficient zero tensor, which cannot be written in place; "
                         "use inplace=False")
