"""The real-data experiment (examples/digits.py) keeps working: a --quick run into a tmp folder
(its table, its JSON and the share each configuration dropped), and the pieces its design rests
on (paired initial weights, the stratified split, the occlusions, dropout's measured mask)."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn")  # the data ships in scikit-learn's wheel (the dev extra)
pytest.importorskip("torchvision")  # DropBlock

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import digits  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``--quick``: 2 seeds (3 and 4) x 5 configurations, 2 epochs of 200 digits, in this process, with
    two declared primary contrasts."""
    out = tmp_path_factory.mktemp("digits") / "fresh"  # (absent: the run creates it)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    try:
        # one thread: on shared cores two threads of a tiny network mostly wait for each other
        assert digits.main(["--quick", "--out", str(out), "--threads", "1", "--first-seed", "3",
                            "--primary", "camdrop:none", "camdrop_self:dropblock"]) == 0
    finally:
        torch.set_rng_state(state)
        torch.set_num_threads(threads)
    return out


def test_digits_quick_writes_table_and_json(quick):
    table = (quick / "digits.md").read_text()
    report = json.loads((quick / "digits.json").read_text())
    assert report["markdown"] == table
    assert list(report["summary"]) == list(digits.CONFIGS)
    assert [(c["a"], c["b"]) for c in report["contrasts"]] == list(digits.CONTRASTS)
    header = [line for line in table.splitlines() if line.startswith("| configuration")]
    assert len(header) == 1 and "discriminative patch acc" in header[0] and "dropped" in header[0]
    for name, entry in report["summary"].items():
        assert entry["label"] in table and len(report["runs"][name]) == 2
        for key in ("clean", "random", "discriminative"):
            assert 0.0 <= entry[key]["mean"] <= 1.0
            if name != "none":
                assert entry[f"{key}_vs_none"]["n"] == 2
    assert "| CamDrop (classifier) − DropBlock |" in table and "Runtime:" in table
    assert report["settings"]["seeds"] == [3, 4] and report["settings"]["test_count"] == 200
    assert [d["seed"] for d in report["data"]] == [3, 4] and "2 paired seeds (seeds 3-4)" in table
    # the declared family: the same paired differences as the tables, Holm over two
    primary = report["primary"]
    assert [(r["a"], r["b"]) for r in primary] == [("camdrop", "none"), ("camdrop_self", "dropblock")]
    vs_none = report["summary"]["camdrop"]["discriminative_vs_none"]
    assert primary[0]["mean"] == vs_none["mean"] and primary[0]["p"] == vs_none["p"]
    assert "| CamDrop (classifier) − none |" in table and "| CamDrop (self) − DropBlock |" in table
    for r in primary:
        assert r["low"] <= r["mean"] <= r["high"] or r["p"] is None
        assert r["p"] is None or r["holm"] >= r["p"]


def test_holm_and_the_t_interval():
    assert digits.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert digits.holm([0.5, None, 0.01]) == [pytest.approx(1.0), None, pytest.approx(0.03)]
    assert digits.t_quantile(0.95, 4) == pytest.approx(2.776445, abs=1e-5)
    assert digits.t_quantile(0.95, 19) == pytest.approx(2.093024, abs=1e-5)


def test_primary_contrasts_are_checked():
    with pytest.raises(SystemExit):
        digits.parse_args(["--primary", "camdrop-none"])
    with pytest.raises(SystemExit):
        digits.parse_args(["--configs", "camdrop", "--primary", "camdrop:dropblock"])
    assert digits.parse_args(["--primary", "camdrop:none"]).primary == [("camdrop", "none")]


def test_digits_quick_dropped_what_each_configuration_should(quick):
    runs = json.loads((quick / "digits.json").read_text())["runs"]
    for name, results in runs.items():
        for r in results:
            if name == "none":
                assert r["dropped_full"] == 0.0 and r["dropped_train"] == 0.0
            else:
                assert r["dropped_full"] > 0.0 and r["dropped_train"] > 0.0, (name, r)
            if name in ("dropblock", "dropout"):
                assert 0.07 < r["dropped_full"] < 0.13  # rate 0.1, measured from their masks
            if name.startswith("camdrop"):
                assert r["saturated_full"] is not None
                assert r["dropped_full"] < 0.1  # the guided region holds less than 10% of the map


def test_digits_refuses_to_overwrite_and_rerenders(quick, tmp_path):
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        digits.main(["--quick", "--out", str(quick)])
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "digits.json").write_text((quick / "digits.json").read_text())
    report = digits.rerender(copy)
    assert (copy / "digits.md").read_text() == report["markdown"] == (quick / "digits.md").read_text()


def test_digits_configurations_are_paired():
    args = digits.parse_args(["--quick"])
    reference = digits.build_model("none", 4, args).state_dict()
    for name in digits.CONFIGS:
        state = digits.build_model(name, 4, args).state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


def test_digits_split_and_occlusions():
    a, b = digits.make_digits(3, 1000, None, 3), digits.make_digits(3, 1000, None, 3)
    assert torch.equal(a.train_x, b.train_x) and all(torch.equal(a.test[k], b.test[k]) for k in a.test)
    assert len(a.train_y) == 1000 and len(a.test_y) == 797
    everything = torch.cat([a.train_y, a.test_y]).bincount()
    assert everything.sum() == 1797 and a.train_y.bincount().sum() == 1000
    assert ((a.train_y.bincount() - everything * 1000 / 1797).abs() < 1).all()  # stratified
    clean = a.test["clean"]
    for name in ("random", "discriminative"):
        changed = a.test[name] != clean
        rows, cols = a.patches[name][:, 0], a.patches[name][:, 1]
        inside = torch.zeros_like(changed)
        for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            inside[i, r:r + 3, c:c + 3] = True
        assert not (changed & ~inside).any()  # only the patch changes
        assert (a.test[name][inside] == 0).all()  # and it is blanked
    assert not torch.equal(a.patches["random"], a.patches["discriminative"])


def test_discriminative_patch_is_the_brute_force_argmax():
    torch.manual_seed(0)
    images, labels, weight = torch.rand(6, 8, 8), torch.randint(0, 10, (6,)), torch.randn(10, 64)
    corners = digits.discriminative_corners(images, labels, weight, 3)
    centred = weight - weight.mean(0)
    for i in range(6):
        evidence = (images[i].flatten() * centred[labels[i]]).view(8, 8)
        sums = torch.tensor([[evidence[r:r + 3, c:c + 3].sum() for c in range(6)] for r in range(6)])
        best = int(sums.flatten().argmax())
        assert corners[i].tolist() == [best // 6, best % 6]


def test_dropout_measures_its_own_mask():
    layer = digits.Dropout(0.3).train()
    x = torch.rand(4, 8, 6, 6) + 0.5  # no zeros of its own
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)
    assert torch.equal(y, F.dropout(x, 0.3, training=True))  # F.dropout itself, same draws
    assert float(layer.last_dropped_fraction) == pytest.approx(float((y == 0).float().mean()))
    assert torch.equal(layer.eval()(x), x)


def test_digits_paired_t_test():
    assert digits.paired([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])["t"] == pytest.approx(0.2 / (0.1 / 3 ** 0.5))
    # t = 2.776445 with 4 degrees of freedom is the two-sided 5% point.
    diffs = [2.776445 * 0.1 / 5 ** 0.5 + 0.1 * z / 2.5 ** 0.5 for z in (-2, -1, 0, 1, 2)]  # sd 0.1
    assert digits.paired(diffs, [0.0] * 5)["p"] == pytest.approx(0.05, abs=1e-6)
    assert digits.paired([0.5, 0.5], [0.5, 0.5])["p"] is None


@pytest.mark.parametrize("folder", ["results", "results/confirm"])
def test_shipped_reports_rerender_from_their_runs(folder, tmp_path):
    """The shipped tables are what the analysis makes of the shipped per-seed runs (the 5-seed
    exploratory run and the declared 20-seed confirmatory one, with its primary family)."""
    shipped = EXAMPLES / folder
    (tmp_path / "digits.json").write_text((shipped / "digits.json").read_text())
    report = digits.rerender(tmp_path)
    assert report["markdown"] == (shipped / "digits.md").read_text()
    if folder.endswith("confirm"):
        saved = json.loads((shipped / "digits.json").read_text())
        assert saved["settings"]["seeds"] == list(range(5, 25))
        assert [(r["a"], r["b"]) for r in report["primary"]] == [("camdrop", "none"), ("camdrop_self", "none"),
                                                                   ("camdrop", "dropblock")]
        assert all(r["holm"] < 0.05 and r["low"] > 0 for r in report["primary"])
