"""The "triton" backend: two launches per forward (state, apply), one per backward (apply).

1. ``state_kernel`` (state_kernel.py): SPEC.md steps 1-7 into the saved state of ``state.py``
   (slots, bits, scale) and the statistics (dropped, rate), one program per sample, no atomics:
   selection, seed rate, seeds, blocks, counts, and the scale of normalize="sample"/"none".
2. ``apply_*_kernel`` (apply.py): step 8 in one read of x and one write of y. In a forward with
   normalize="batch" it also computes the batch scale from the N counts (and stores it).

``build_state`` alone with normalize="batch" adds ``finish_kernel`` (common.py, one program) for
the batch scale: two launches; a forward stays at two (three beyond ``plan.BATCH_INLINE`` samples:
``Plan.then`` of the state plan says which).

Host side (plan.py): launch plans cached by (options, shapes, strides, dtypes, ...), launched
through the compiled kernels' own launchers (launch.py): a forward costs a few dictionary look-ups
and two launcher calls. The seed and rate are read inside the kernel (from device memory) or passed
by value (a CPU tensor: read here without a device sync); nothing captured changes between calls,
so CUDA graphs and torch.compile work, and a new drop_prob compiles nothing. Under
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (small grids there). Maps of every rank
are handled as 3-D (D, H, W). Tools (tools/): report, sass, compile_check.
"""
from __future__ import annotations

from ..options import Options
from .plan import THEN_APPLY_SCALES, THEN_NOTHING, apply_launch, apply_plan, finish_launch, state_launch, state_plan

__all__ = ["build_state", "apply", "forward", "state_launch", "apply_launch", "finish_launch", "state_plan",
           "apply_plan"]


def build_state(x, cam, alpha, seed, drop_prob, opts: Options, out) -> None:
    """Steps 1-7 into ``out`` = (slots, bits, scale, dropped, rate): one launch (two with
    normalize="batch": the batch scale from the counts)."""
    plan, args, index = state_launch(x, cam, alpha, seed, drop_prob, opts, out)
    plan.launch(args, index)
    if plan.then != THEN_NOTHING:
        plan, args, index = finish_launch(x.shape, out[3], out[2])
        plan.launch(args, index)


def forward(x, cam, alpha, seed, drop_prob, opts: Options, y, out) -> None:
    """The whole forward, steps 1-8: the state launch, then the apply launch into y (which computes
    and stores the batch scale itself)."""
    plan, args, index = state_launch(x, cam, alpha, seed, drop_prob, opts, out)
    plan.launch(args, index)
    then = plan.then
    if then == THEN_NOTHING:
        plan, args, index = apply_launch(x, y, out[0], out[1], out[2])
    elif then == THEN_APPLY_SCALES:
        plan, args, index = apply_launch(x, y, out[0], out[1], out[2], out[3])
    else:  # many samples: one program sums the counts once, rather than every apply program
        plan, args, index = finish_launch(x.shape, out[3], out[2])
        plan.launch(args, index)
        plan, args, index = apply_launch(x, y, out[0], out[1], out[2])
    plan.launch(args, index)


def apply(x, y, slots, bits, scale) -> None:
    """Step 8: y = +0.0 where dropped, else x * scale (y may be x): one launch."""
    plan, args, index = apply_launch(x, y, slots, bits, scale)
    plan.launch(args, index)
