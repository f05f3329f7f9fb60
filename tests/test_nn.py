"""The modules: rate buffer, statistics, copies, DataParallel, odd shapes."""
import copy
import pickle
import warnings

import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels.nn import CamDropNd



class Net(torch.nn.Module):
    """conv -> bound CamDrop -> global average pooling -> linear, for any rank."""

    def __init__(self, rank=2, channels=16, classes=10, **kw):
        super().__init__()
        conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[rank]
        layer = {1: ck.CamDrop1d, 2: ck.CamDrop2d, 3: ck.CamDrop3d}[rank]
        self.rank = rank
        self.conv = conv(3, channels, 3, padding=1)
        self.fc = torch.nn.Linear(channels, classes)
        self.drop = layer(kw.pop("drop_prob", 0.3), 3, classifier=self.fc, **kw)

    def forward(self, x):
        return self.fc(self.drop(self.conv(x)).flatten(2).mean(2))


def batch(rank=2, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = {1: (32,), 2: (12, 12), 3: (4, 8, 8)}[rank]
    return torch.randn(n, 3, *S, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_rate_is_a_float64_buffer_outside_the_state_dict():
    torch.manual_seed(0)
    net = Net()
    assert "drop._drop_prob" not in net.state_dict()
    assert net.drop._drop_prob.dtype == torch.float64
    net.half()
    assert net.drop._drop_prob.dtype == torch.float64 and float(net.drop._drop_prob) == 0.3
    net.to(torch.bfloat16)
    assert net.drop._drop_prob.item() == 0.3 and net.drop.drop_prob == 0.3
    ck.set_drop_prob(net, 0.1)
    assert net.drop._drop_prob.item() == 0.1 and net.drop.drop_prob == 0.1


def test_to_empty_refills_the_rate_and_count_buffers():
    """Built on meta, then to_empty (the large-model flow): the non-persistent buffers, which
    load_state_dict cannot restore, hold the layer's rate and count again, not garbage."""
    with torch.device("meta"):
        net = Net(drop_prob=0.25)
    net = net.to_empty(device="cpu")
    net.load_state_dict(Net().state_dict())
    assert net.drop._drop_prob.item() == 0.25 and net.drop._numel.item() == net.drop.guide.numel
    net.train()
    x, y = batch()
    with ck.targets(net, y):
        net(x)
    assert float(net.drop.last_dropped_fraction) > 0


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_statistics_without_sync(rank):
    torch.manual_seed(0)
    net = Net(rank).train()
    x, y = batch(rank)
    assert net.drop.last_dropped_fraction is None and "no training batch" in ck.dropped_summary(net)
    with ck.targets(net, y):
        net(x)
    frac = net.drop.last_dropped_fraction
    assert frac.dim() == 0 and frac.device == net.drop.last_dropped.device
    assert 0 < float(frac) < 0.3
    stats = ck.dropped_stats(net)
    assert set(stats) == {"drop"} and torch.equal(stats["drop"]["fraction"], frac)
    line = ck.dropped_summary(net)
    assert line.startswith("camdrop dropped: drop ") and "%" in line


def test_saturation_is_reported():
    torch.manual_seed(0)
    net = Net(drop_prob=1.0).train()
    x, y = batch()
    with ck.targets(net, y):
        net(x)
    assert bool(net.drop.saturated)
    assert "!" in ck.dropped_summary(net) and "saturated" in ck.dropped_summary(net)


def test_nested_targets_restore_the_outer_ones():
    """Regression: leaving an inner `targets` block cleared the outer block's labels."""
    torch.manual_seed(0)
    net = Net().train()
    x, y = batch()
    _, y2 = batch(seed=1)
    with ck.targets(net, y):
        with ck.targets(net, y2):
            assert net.drop.guide.targets is y2
        assert net.drop.guide.targets is y
        net(x)  # the outer labels still guide this forward
    assert net.drop.guide.targets is None


def test_copies_never_carry_labels():
    """Regression: a deepcopy or pickle made inside the context carried the labels, and later
    forwards on the copy silently used them."""
    torch.manual_seed(0)
    net = Net().train()
    x, y = batch()
    with ck.targets(net, y):
        net(x)
        twin = copy.deepcopy(net)
        pickled = pickle.loads(pickle.dumps(net))
    for m in (twin, pickled):
        assert m.drop.guide.targets is None and not m.drop.guide.history
        assert m.drop.classifier is m.fc
        with pytest.raises(RuntimeError, match="no targets"):
            m(x)


def test_bound_layer_on_zero_channels_returns_x():
    """Regression: a bound layer on C = 0 raised ZeroDivisionError; the functional API returns x."""
    fc = torch.nn.Linear(4, 3)
    layer = ck.CamDrop2d(0.5, 3, classifier=fc).train()
    x = torch.randn(2, 0, 5, 5)
    with ck.targets(layer, torch.tensor([0, 1])):
        assert layer(x) is x
    assert float(layer.last_dropped_fraction) == 0.0


def test_dataparallel_replicas_are_refused_with_a_pointer_to_ddp():
    """nn.DataParallel on several GPUs hands each replica the whole batch's targets: a bound layer
    refuses to run as a replica and points to DDP. (Its replicas carry _is_replica.)"""
    torch.manual_seed(0)
    net = Net().train()
    x, y = batch()
    replica = net._replicate_for_data_parallel()
    replica.drop = net.drop._replicate_for_data_parallel()
    with ck.targets(net, y):
        net.drop.set_targets(y)
        replica.drop.set_targets(y)
        with pytest.raises(RuntimeError, match="DistributedDataParallel"):
            replica.drop(torch.randn(4, 16, 12, 12))
    # Explicit guidance needs no targets, so it still runs as a replica.
    assert replica.drop(torch.randn(2, 16, 5, 5), torch.randn(2, 5, 5), torch.randn(2, 16)).shape == (2, 16, 5, 5)


def test_missing_targets_error_and_skip():
    torch.manual_seed(0)
    x, _ = batch()
    with pytest.raises(RuntimeError, match=r"camdrop_kernels.targets\(model, labels\)"):
        Net().train()(x)
    skipping = Net(missing_targets="skip").train()
    plain = copy.deepcopy(skipping)
    plain.drop = torch.nn.Identity()
    assert torch.equal(skipping(x), plain(x))
    assert float(skipping.drop.last_dropped_fraction) == 0.0


def test_layers_are_found_and_rank_checked():
    torch.manual_seed(0)
    net = Net(3)
    assert ck.camdrop_layers(net) == [net.drop] and isinstance(net.drop, CamDropNd)
    with pytest.raises(ValueError, match="5-D"):
        net.drop.train()(torch.randn(2, 16, 4, 4), torch.randn(2, 4, 4), torch.randn(2, 16))


class TwoStage(torch.nn.Module):
    """Two bound CamDrop layers on 16 channels and one on 8, all guided by one classifier."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)
        self.a = ck.CamDrop2d(0.3, 3, classifier=self.fc)
        self.b = ck.CamDrop2d(0.3, 3, classifier=self.fc)
        self.c = ck.CamDrop2d(0.3, 3, classifier=self.fc)

    def forward(self, x):
        h = self.b(self.a(self.conv(x)))
        h = h + torch.cat([self.c(h[:, :8]), h[:, 8:]], 1)
        return self.fc(h.flatten(2).mean(2))


def test_a_forward_computes_each_channel_importance_once(monkeypatch):
    """Within one forward, layers of one classifier and channel count share alpha (one gather a
    stage, not a layer); every forward computes it again, so weights changed between two forwards
    of one block are seen even without a version bump (fused optimizers, .data writes); the outputs
    equal those of layers computing their own alpha."""
    import camdrop_kernels.guide as guide_module

    calls = []
    real = guide_module.importance
    monkeypatch.setattr(guide_module, "importance", lambda w, t, c, layout=None, norm=None: calls.append(c) or real(w, t, c))
    torch.manual_seed(0)
    net = TwoStage().train()
    weight = net.fc.weight.detach().clone()
    x, y = batch()
    torch.manual_seed(5)
    with ck.targets(net, y):
        out = net(x)
        assert calls == [16, 8]
        net(x)
        assert calls == [16, 8] * 2
        assert len(net.a.guide.scope.memo) <= 2  # (one forward's entries at most)
    for layer in (net.a, net.b, net.c):
        layer.set_targets(y)
    net(x)
    assert calls == [16, 8] * 2 + [16, 16, 8]  # (set_targets: a scope per layer, nothing shared)
    for layer in (net.a, net.b, net.c):
        layer.set_targets(None)
    # Same outputs as without sharing (each layer computing its own alpha):
    monkeypatch.setattr(guide_module.Guide, "_importance",
                        lambda self, w, t, c, scope, compiling: real(w.detach(), t, c))
    torch.manual_seed(5)
    with ck.targets(net, y):
        assert torch.equal(net(x), out)
    assert torch.equal(net.fc.weight, weight)


def test_weights_changed_without_a_version_bump_between_two_forwards_of_a_block():
    """Regression (review): two forwards in one targets block with the classifier changed in between
    through .data (as fused optimizers and some SAM code do: no version bump) reused the first
    forward's channel importance. The second forward must equal the same forward in a fresh block."""
    torch.manual_seed(0)
    net = TwoStage().train()
    x, y = batch()
    with ck.targets(net, y):
        net(x)
        net.fc.weight.data.mul_(-1.0)  # (no version bump)
        torch.manual_seed(9)
        second = net(x)
    torch.manual_seed(9)
    with ck.targets(net, y):
        fresh = net(x)
    assert torch.equal(second, fresh)


def test_the_shared_importance_is_per_autocast_state(monkeypatch):
    """Soft targets' importance is a matmul that autocast lowers: a layer under autocast and one
    outside it, in one forward, do not share it."""
    import camdrop_kernels.guide as guide_module

    calls = []
    real = guide_module.importance
    monkeypatch.setattr(guide_module, "importance", lambda w, t, c, layout=None, norm=None: calls.append(c) or real(w, t, c))
    torch.manual_seed(0)
    net = TwoStage().train()
    x, _ = batch()
    soft = torch.softmax(torch.randn(x.shape[0], 10), 1)
    with ck.targets(net, soft):
        h = net.conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = net.a(h)
        net.b(h.float())
    assert calls == [16, 16]


def test_layers_pickled_by_release_0_2_still_work():
    """A layer pickled before the Guide existed (its classifier, missing_targets and statistics as
    attributes of its own, a _memo, _history, _recent) loads and trains."""
    torch.manual_seed(0)
    net = TwoStage().train()
    for layer in (net.a, net.b, net.c):
        guide = layer.__dict__.pop("guide")
        layer.__dict__.update(_classifier=guide.classifier, missing_targets="error", last_dropped=None,
                              last_rate=None, _numel_value=1, _targets=None, _memo=None, _history={}, _recent=[])
    restored = pickle.loads(pickle.dumps(net))
    x, y = batch()
    with ck.targets(restored, y):
        restored(x)
    assert all(layer.classifier is restored.fc and layer.last_dropped is not None
               for layer in (restored.a, restored.b, restored.c))


def test_targets_made_in_inference_mode_still_guide():
    """Labels created under torch.inference_mode keep no version counter: the shared importance is
    not used for them (computed per layer), and the forward works."""
    torch.manual_seed(0)
    net = TwoStage().train()
    x, y = batch()
    with torch.inference_mode():
        y_inf = y.clone()
    torch.manual_seed(3)
    with ck.targets(net, y_inf):
        got = net(x)
    torch.manual_seed(3)
    with ck.targets(net, y):
        want = net(x)
    assert torch.equal(got, want)


def test_the_dropped_share_is_right_after_compiled_and_eager_forwards_of_other_sizes():
    """A compiled forward fills the element count the share divides by; the next eager forward of
    another size must refill it (it cannot rely on its own record of the last size)."""
    torch.manual_seed(0)
    layer = ck.CamDrop2d(0.3, 3, guidance="self").train()
    compiled = torch.compile(layer, backend="eager")
    a, b = torch.randn(8, 16, 8, 8), torch.randn(2, 16, 8, 8)
    for run, x in ((layer, a), (compiled, b), (layer, a), (compiled, a), (layer, b), (layer, b)):
        run(x)
        want = layer.last_dropped.sum().to(torch.float32) / float(x.numel())
        assert float(layer.last_dropped_fraction) == float(want) > 0


def test_a_map_too_small_for_the_block_warns_once_per_size():
    """Block 5 on 6x6 leaves 4 of 36 pixels as seed centres and one eligible top pixel: the layer
    would drop in few samples. It says so once per map size, not at sizes where blocks fit."""
    layer = ck.CamDrop2d(0.3, 5, guidance="self").train()
    with pytest.warns(UserWarning, match=r"on a 6x6 map: only 4 of its 36 pixels can centre a whole block, and 1 top "
                                         r"pixel is eligible") as caught:
        layer(torch.randn(2, 8, 6, 6))
    assert [w.filename for w in caught] == [__file__]  # (the caller's line, not torch's module machinery)
    model = torch.nn.Sequential(torch.nn.Identity(), ck.CamDrop2d(0.3, 5, guidance="self")).train()
    with pytest.warns(UserWarning, match="on a 6x6 map") as caught:
        model(torch.randn(2, 8, 6, 6))  # (the line that called the model, not the container's forward)
    assert [w.filename for w in caught] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(2, 8, 6, 6))  # once per size
        layer(torch.randn(3, 8, 6, 6))  # (another batch size, the same map)
        layer(torch.randn(2, 8, 14, 14))  # 100 of 196 centres
        ck.CamDrop2d(0.3, 3, guidance="self").train()(torch.randn(2, 8, 7, 7))  # 25 of 49
        ck.CamDrop2d(0.0, 5, guidance="self").train()(torch.randn(2, 8, 6, 6))  # rate 0: nothing asked
    with pytest.warns(UserWarning, match=r"CamDrop1d \(block_size=7\) on a 7 map: only 1 of its 7 pixels"):
        ck.CamDrop1d(0.3, 7, guidance="self").train()(torch.randn(2, 4, 7))


def test_the_map_size_check_after_a_zero_rate_a_new_size_and_a_chosen_top_pixels():
    layer = ck.CamDrop2d(0.0, 5, guidance="self").train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(4, 8, 6, 6))  # rate 0: nothing asked, nothing said
    ck.set_drop_prob(layer, 0.3)
    with pytest.warns(UserWarning, match="on a 6x6 map"):  # (the same size, now asked to drop)
        layer(torch.randn(4, 8, 6, 6))
    big = ck.CamDrop2d(0.3, 5, guidance="self").train()
    big(torch.randn(1, 8, 24, 24))
    with pytest.warns(UserWarning, match="on a 6x6 map"):  # (the same number of elements, a new map size)
        big(torch.randn(16, 8, 6, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a chosen top_pixels is the user's call (here it drops in every sample)
        chosen = ck.CamDrop2d(0.5, 5, top_pixels=1.0, guidance="self").train()
        chosen(torch.randn(8, 16, 6, 6))
    assert bool((chosen.last_dropped > 0).all())
