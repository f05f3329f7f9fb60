"""Named bits of the state kernel's ``flags`` argument (run-time switches: one compiled kernel
serves every combination) and the normalisation codes, shared by the kernel and the planner.

They are ``tl.constexpr`` so that kernels may read them; the planner uses ``.value``."""
import triton.language as tl

from ..options import NORMALIZE_CODES

ELIGIBLE = tl.constexpr(1)  # gamma_mode "eligible" (else "dropblock")
P_FROM_PTR = tl.constexpr(2)  # drop_prob is read from device memory (else passed by value)
SEED_FROM_PTR = tl.constexpr(4)  # the seed is read from device memory (else passed by value)
DIAMOND = tl.constexpr(8)  # block_shape "diamond" (else "square")
NORMALIZE_SHIFT = tl.constexpr(4)  # two bits from here: one of the codes below
NORMALIZE_MASK = tl.constexpr(3)

NORM_BATCH = tl.constexpr(NORMALIZE_CODES["batch"])
NORM_SAMPLE = tl.constexpr(NORMALIZE_CODES["sample"])
NORM_NONE = tl.constexpr(NORMALIZE_CODES["none"])
NORMALIZE = NORMALIZE_CODES
