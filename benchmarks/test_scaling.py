"""Scaling: CamDrop's time against tensor size (batch) and against block_size, top_pixels and
top_channels, beside the bare multiply and the mask build alone, so the mask work's share shows."""
import pytest

import camdrop_kernels as ck
from camdrop_kernels import ops
from camdrop_kernels.options import Options
from camdrop_kernels.philox import make_seed, rate_tensor

from cases import scaling_dtype, scaling_shapes
from conftest import make_inputs, timed
from contenders import dropped_share

TARGET, BATCHES = scaling_shapes()
DTYPE = scaling_dtype()


def _run(benchmark, shape, what, group, **kw):
    x, cam, alpha = make_inputs(shape, DTYPE, "contiguous")
    opts = dict(drop_prob=0.1, block_size=7, top_pixels=None, top_channels=None)
    opts.update(kw)
    share = None
    if what == "camdrop":
        fn = lambda: ck.camdrop(x, cam, alpha, **opts)  # noqa: E731
        share = dropped_share(fn())
    elif what == "mask build":
        o = Options.get(2, opts["block_size"], opts["top_pixels"], opts["top_channels"], "square", "batch",
                        "eligible", 1.0)
        p = rate_tensor(opts["drop_prob"])
        fn = lambda: ops.build_state(x, cam, alpha, make_seed(None, None, x), p, o)  # noqa: E731
    else:
        fn = lambda: x * 1.25  # noqa: E731
    timed(benchmark, fn, group=group, info=dict(contender=what, shape=list(shape), dtype=str(DTYPE), scaling=group,
                                                x_bytes=x.numel() * x.element_size(), dropped_share=share,
                                                **{"pass": "forward"}, **{k: str(v) for k, v in kw.items()}))


@pytest.mark.parametrize("what", ["camdrop", "mask build", "floor:multiply"])
@pytest.mark.parametrize("batch", BATCHES)
def test_batch(benchmark, batch, what):
    _run(benchmark, (batch,) + TARGET[1:], what, f"scaling: batch={batch}")


@pytest.mark.parametrize("what", ["camdrop", "mask build"])
@pytest.mark.parametrize("block_size", [1, 3, 5, 7, 9, 11])
def test_block_size(benchmark, block_size, what):
    _run(benchmark, TARGET, what, f"scaling: block_size={block_size}", block_size=block_size)


@pytest.mark.parametrize("what", ["camdrop", "mask build"])
@pytest.mark.parametrize("top", [(None, None), (0.1, None), (0.5, None), (1.0, None), (None, 0.5), (None, 1.0),
                                 (1.0, 1.0)], ids=str)
def test_top_fractions(benchmark, top, what):
    tp, tc = top
    _run(benchmark, TARGET, what, f"scaling: top_pixels={tp}, top_channels={tc}", top_pixels=tp, top_channels=tc)
