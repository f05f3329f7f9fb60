"""The MNIST-1D study (examples/mnist_1d.py) keeps working on digits.py's machinery: a --quick run
(its table, JSON and the share each configuration dropped), its data and occlusions, the 1-D
DropBlock it compares against, and the shipped report re-rendering from its per-seed runs."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("CI") != "true":  # (in CI the dev extra installs both: a missing one fails, not skips)
    pytest.importorskip("mnist1d")  # generates the data (no download)
    pytest.importorskip("sklearn")  # the logistic regression that picks the discriminative segment

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import digits  # noqa: E402
import mnist_1d  # noqa: E402
import regularizers  # noqa: E402
from regularizers import DropBlock1d  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist1d") / "fresh"
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    try:
        assert mnist_1d.main(["--quick", "--out", str(out), "--threads", "1", "--primary", "camdrop:none"]) == 0
    finally:
        torch.set_rng_state(state)
        torch.set_num_threads(threads)
    return out


def test_quick_run_writes_table_and_json_and_drops(quick):
    table = (quick / "mnist1d.md").read_text()
    report = json.loads((quick / "mnist1d.json").read_text())
    assert report["markdown"] == table and table.startswith("### CamDrop1d on MNIST-1D, 2 paired seeds")
    assert list(report["summary"]) == list(mnist_1d.CONFIGS)
    assert "discriminative segment acc" in table and "| CamDrop (classifier) − none |" in table
    assert report["settings"]["command"].startswith("python examples/mnist_1d.py --quick")
    for name, results in report["runs"].items():
        assert len(results) == 2
        for r in results:
            if name == "none":
                assert r["dropped_full"] == 0.0
            else:
                assert r["dropped_full"] > 0.0 and r["dropped_train"] > 0.0, (name, r)
            if name in ("dropblock", "dropout"):
                assert 0.07 < r["dropped_full"] < 0.13  # rate 0.1, from their own masks
            if name.startswith("camdrop"):
                assert r["dropped_full"] < 0.1 and r["saturated_full"] is not None
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        mnist_1d.main(["--quick", "--out", str(quick)])


def test_configurations_are_paired():
    args = mnist_1d.parse_args(["--quick"])
    reference = mnist_1d.build_model("none", 2, args).state_dict()
    for name in mnist_1d.CONFIGS:
        state = mnist_1d.build_model(name, 2, args).state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


def test_split_and_occlusions():
    a, b = mnist_1d.make_split(3, 1000, None, 6), mnist_1d.make_split(3, 1000, None, 6)
    assert torch.equal(a.train_x, b.train_x) and all(torch.equal(a.test[k], b.test[k]) for k in a.test)
    assert a.train_x.shape == (1000, 40) and a.test["clean"].shape == (1000, 40)
    _, y, _, _ = mnist_1d._load()
    assert ((a.train_y.bincount() - y.bincount() * 1000 / len(y)).abs() < 1).all()  # stratified
    assert not torch.equal(a.train_y, mnist_1d.make_split(4, 1000, None, 6).train_y)  # another seed, another subset
    clean = a.test["clean"]
    for name in ("random", "discriminative"):
        starts = a.patches[name][:, 0]
        inside = (torch.arange(40) >= starts[:, None]) & (torch.arange(40) < starts[:, None] + 6)
        changed = a.test[name] != clean
        assert not (changed & ~inside).any() and (a.test[name][inside] == 0).all()
    assert a.linear["discriminative"] < a.linear["random"] < a.linear["clean"]


def test_discriminative_segment_is_the_brute_force_argmax():
    g = torch.Generator().manual_seed(0)
    signals, labels, weight = torch.randn(6, 40, generator=g), torch.randint(0, 10, (6,), generator=g), \
        torch.randn(10, 40, generator=g)
    starts = mnist_1d.discriminative_starts(signals, labels, weight, 6)
    centred = weight - weight.mean(0)
    for i in range(6):
        evidence = signals[i] * centred[labels[i]]
        sums = torch.stack([evidence[s:s + 6].sum() for s in range(35)])
        assert int(starts[i]) == int(sums.argmax())


@pytest.mark.parametrize("block", [1, 2, 3, 4])
def test_dropblock1d_drops_whole_blocks_around_its_seeds_and_rescales(block):
    layer = DropBlock1d(0.2, block).train()
    x = torch.rand(3, 5, 17, dtype=torch.float64) + 0.5
    torch.manual_seed(11)
    y = layer(x)
    torch.manual_seed(11)
    gamma = 0.2 * 17 / (block * (17 - block + 1))
    seeds = torch.empty((3, 5, 17 - block + 1), dtype=x.dtype).bernoulli_(gamma)
    dropped = torch.zeros_like(x, dtype=torch.bool)
    for n, c, s in seeds.nonzero().tolist():
        dropped[n, c, s:s + block] = True  # a seed at s drops s .. s + block - 1
    keep = (~dropped).to(x.dtype)
    assert dropped.any()
    assert torch.equal(y, x * keep * (keep.numel() / (1e-6 + keep.sum())))
    assert float(layer.last_dropped_fraction) == pytest.approx(float(dropped.double().mean()))
    assert torch.equal(layer.eval()(x), x)


def test_dropblock1d_drops_about_its_rate_in_half_precision_too():
    layer = DropBlock1d(0.1, 3).train()
    torch.manual_seed(0)
    layer(torch.ones(64, 64, 20))
    assert 0.08 < float(layer.last_dropped_fraction) < 0.105  # 0.1 before blocks overlap
    torch.manual_seed(0)
    y = layer(torch.ones(64, 64, 20, dtype=torch.float16))  # (65,536 kept ones: a float16 sum is inf)
    assert y.dtype == torch.float16 and 0.99 < float(y.float().mean()) < 1.01
    with pytest.raises(ValueError, match=r"\(N, C, L\) maps"):
        layer(torch.ones(4, 20))
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), DropBlock1d(0.1, 3, drop_prob_scale=0.25))
    regularizers.set_rate(model, 0.2)  # (the examples' schedule helper)
    assert model[1].drop_prob == pytest.approx(0.05)


def test_shipped_report_rerenders_from_its_runs(tmp_path):
    shipped = EXAMPLES / "results" / "mnist1d"
    (tmp_path / "mnist1d.json").write_text((shipped / "mnist1d.json").read_text())
    report = digits.rerender(tmp_path, mnist_1d.MNIST1D)
    assert report["markdown"] == (shipped / "mnist1d.md").read_text()
    saved = json.loads((shipped / "mnist1d.json").read_text())
    assert saved["settings"]["seeds"] == list(range(20)) and saved["settings"]["train_size"] == 1000
    assert [(r["a"], r["b"]) for r in report["primary"]] == [("camdrop", "none"), ("camdrop_self", "none"),
                                                               ("camdrop", "dropblock")]
