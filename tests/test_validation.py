"""Bad input fails at once with a ValueError or TypeError that names the argument."""
import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import reference

x = torch.randn(2, 4, 5, 6)
cam = torch.randn(2, 5, 6)
alpha = torch.randn(2, 4)

ENTRY_POINTS = [ck.camdrop, ck.camdrop_mask, reference.camdrop, reference.camdrop_mask]
x1, cam1, alpha1 = torch.randn(2, 4, 9), torch.randn(2, 9), torch.randn(2, 4)
x3, cam3, alpha3 = torch.randn(2, 4, 3, 5, 6), torch.randn(2, 3, 5, 6), torch.randn(2, 4)

BAD_CALLS = [
    # (args, kwargs, exception, words the message must contain)
    ((x[0], cam, alpha), {}, ValueError, ["x", "4-D"]),
    ((x.long(), cam, alpha), {}, TypeError, ["x", "floating"]),
    (([1.0], cam, alpha), {}, TypeError, ["x", "Tensor"]),
    ((x, cam.long(), alpha), {}, TypeError, ["cam", "floating"]),
    ((x, cam[:, :4], alpha), {}, ValueError, ["cam", "resize", "class_activation_map"]),
    ((x, cam[:1], alpha), {}, ValueError, ["cam", "(N, H, W)"]),
    ((x, cam[:, None].expand(2, 2, 5, 6), alpha), {}, ValueError, ["cam"]),
    ((x, cam, alpha[:, :3]), {}, ValueError, ["alpha", "(N, C)"]),
    ((x, cam, alpha[0]), {}, ValueError, ["alpha"]),
    ((x, cam, alpha.int()), {}, TypeError, ["alpha", "floating"]),
    ((x, cam, alpha), {"drop_prob": 1.5}, ValueError, ["drop_prob", "[0, 1]"]),
    ((x, cam, alpha), {"drop_prob": -0.1}, ValueError, ["drop_prob"]),
    ((x, cam, alpha), {"drop_prob": float("nan")}, ValueError, ["drop_prob"]),
    ((x, cam, alpha), {"drop_prob": "0.1"}, TypeError, ["drop_prob"]),
    ((x, cam, alpha), {"block_size": 0}, ValueError, ["block_size", ">= 1"]),
    ((x, cam, alpha), {"block_size": 3.0}, TypeError, ["block_size", "int"]),
    ((x, cam, alpha), {"block_size": True}, TypeError, ["block_size"]),
    ((x, cam, alpha), {"top_pixels": 0}, ValueError, ["top_pixels"]),
    ((x, cam, alpha), {"top_pixels": 1.5}, ValueError, ["top_pixels", "(0, 1]"]),
    ((x, cam, alpha), {"top_pixels": 0.0}, ValueError, ["top_pixels"]),
    ((x, cam, alpha), {"top_pixels": "all"}, TypeError, ["top_pixels"]),
    ((x, cam, alpha), {"top_channels": -2}, ValueError, ["top_channels"]),
    ((x, cam, alpha), {"top_channels": float("nan")}, ValueError, ["top_channels"]),
    ((x, cam, alpha), {"block_shape": "circle"}, ValueError, ["block_shape", "'square'", "'diamond'"]),
    ((x, cam, alpha), {"normalize": "global"}, ValueError, ["normalize", "'batch'", "'sample'", "'none'"]),
    ((x, cam, alpha), {"gamma_mode": "paper"}, ValueError, ["gamma_mode", "'dropblock'", "'eligible'"]),
    ((x, cam, alpha), {"gamma_scale": -1.0}, ValueError, ["gamma_scale"]),
    ((x, cam, alpha), {"gamma_scale": float("inf")}, ValueError, ["gamma_scale"]),
    ((x, cam, alpha), {"seed": -1}, ValueError, ["seed", "2**63"]),
    ((x, cam, alpha), {"seed": 2**63}, ValueError, ["seed", "2**63"]),
    ((x, cam, alpha), {"seed": 1.0}, TypeError, ["seed"]),
    ((x, cam, alpha), {"generator": 5}, TypeError, ["generator"]),
    ((x, cam, alpha), {"top_pixels": True}, TypeError, ["top_pixels"]),
    ((x, cam, alpha), {"top_channels": False}, TypeError, ["top_channels"]),
    ((x, cam, alpha), {"top_pixels": [1]}, TypeError, ["top_pixels"]),
    ((x, cam, alpha), {"gamma_scale": "2"}, TypeError, ["gamma_scale"]),
    ((x1, cam1, alpha1), {}, ValueError, ["x", "4-D", "camdrop1d"]),
    ((x3, cam3, alpha3), {}, ValueError, ["x", "4-D", "camdrop3d"]),
    ((x, cam, alpha.to(torch.int32)), {}, TypeError, ["alpha"]),
    ((x.to(torch.complex64), cam, alpha), {}, TypeError, ["x"]),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@pytest.mark.parametrize("args,kwargs,exc,words", BAD_CALLS)
def test_bad_input_is_named(entry, args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        entry(*args, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("entry", [ck.camdrop, ck.camdrop_mask])
def test_unknown_backend_lists_choices(entry):
    with pytest.raises(ValueError, match="backend.*'auto'.*'torch'.*'triton'"):
        entry(x, cam, alpha, backend="cuda")


@pytest.mark.parametrize("fn,args,words", [
    (ck.camdrop1d, (x, cam, alpha), ["x", "3-D", "(N, C, L)", "camdrop"]),
    (ck.camdrop3d, (x, cam, alpha), ["x", "5-D", "(N, C, D, H, W)", "camdrop"]),
    (ck.camdrop1d, (x1, cam1[:, :4], alpha1), ["cam", "resize"]),
    (ck.camdrop3d, (x3, cam3[:, :, :2], alpha3), ["cam", "resize"]),
    (ck.camdrop1d_mask, (x1, cam1, alpha1[:, :2]), ["alpha", "(N, C)"]),
    (ck.camdrop3d_mask, (x3, cam3, alpha3), []),
])
def test_other_ranks_are_checked_by_name(fn, args, words):
    if not words:
        assert fn(*args, seed=1).shape == args[0].shape
        return
    with pytest.raises(ValueError) as info:
        fn(*args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_training_and_inplace_must_be_bool():
    with pytest.raises(TypeError, match="training"):
        ck.camdrop(x, cam, alpha, training=1)
    with pytest.raises(TypeError, match="inplace"):
        ck.camdrop(x, cam, alpha, inplace="yes")


def test_bad_input_fails_even_when_the_call_would_be_a_no_op():
    with pytest.raises(ValueError, match="block_size"):
        ck.camdrop(x, cam, alpha, 0.0, 0)
    with pytest.raises(ValueError, match="cam"):
        ck.camdrop(x, cam[:, :2], alpha, training=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match="cam.*device"):
        ck.camdrop(x.cuda(), cam, alpha.cuda())


def test_tensors_on_different_devices_meta():
    with pytest.raises(ValueError, match="alpha is on meta"):
        ck.camdrop(x, cam, alpha.to("meta"))


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="drop_prob"):
        ck.CamDrop2d(2.0)
    with pytest.raises(ValueError, match="block_shape"):
        ck.CamDrop2d(block_shape="round")
    with pytest.raises(ValueError, match="backend"):
        ck.CamDrop2d(backend="cuda")
    with pytest.raises(TypeError, match="top_pixels"):
        ck.CamDrop3d(top_pixels=True)
    layer = ck.CamDrop1d(0.1)
    with pytest.raises(ValueError, match="drop_prob"):
        layer.drop_prob = float("nan")
    assert layer.drop_prob == 0.1


def test_channel_importance_errors():
    w = torch.randn(10, 16)
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 10\)"):
        ck.channel_importance(w, torch.tensor([0, 10]), 4)
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 10\)"):
        ck.channel_importance(w, torch.tensor([-1, 3]), 4)
    with pytest.raises(ValueError, match="weight"):
        ck.channel_importance(torch.randn(10, 16, 1), torch.tensor([0]), 4)
    with pytest.raises(TypeError, match="weight"):
        ck.channel_importance(torch.ones(10, 16, dtype=torch.long), torch.tensor([0]), 4)
    with pytest.raises(ValueError, match=r"soft targets must have shape \(N, 10\)"):
        ck.channel_importance(w, torch.rand(2, 9), 4)
    with pytest.raises(ValueError, match="channels"):
        ck.channel_importance(w, torch.tensor([1]), 0)
    with pytest.raises(TypeError, match="targets"):
        ck.channel_importance(w, [1, 2], 4)


def test_class_activation_map_errors():
    with pytest.raises(ValueError, match="alpha.*channels"):
        ck.class_activation_map(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match="x must be .N, C, .S."):
        ck.class_activation_map(x[0, 0], alpha)


@pytest.mark.parametrize("entry", [ck.camdrop, ck.camdrop_mask])
@pytest.mark.parametrize("which", ["x", "cam", "alpha"])
def test_non_dense_layouts_are_named(entry, which):
    """Sparse and mkldnn tensors are refused by name (they failed deep inside torch)."""
    args = dict(x=x, cam=cam, alpha=alpha)
    for layout in ("sparse", "mkldnn"):
        if layout == "mkldnn" and (which != "x" or not torch.backends.mkldnn.is_available()):
            continue
        bad = dict(args, **{which: args[which].to_sparse() if layout == "sparse" else args[which].to_mkldnn()})
        with pytest.raises(TypeError, match=f"{which} must be a dense"):
            entry(bad["x"], bad["cam"], bad["alpha"], 0.5, 3)


def test_targets_must_be_indices_or_soft_targets():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), ck.CamDrop2d(0.5, 3))
    with pytest.raises(TypeError, match="targets must be a tensor"):
        with ck.targets(net, [0, 1]):
            pass
    with pytest.raises(ValueError, match=r"\(N,\) or soft targets \(N, K\); got shape \(\)"):
        with ck.targets(net, torch.tensor(3)):
            pass


def test_raw_apply_checks_an_empty_x_too():
    """Regression: on the native backend an empty x skipped the state's checks."""
    empty = torch.empty(0, 4, 5, 6)
    bad = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="slots"):
        torch.ops.camdrop_kernels.camdrop_apply(empty, bad, bad, bad)
