"""The shipped examples keep working: the evidence experiment on a tiny budget (its table and JSON),
the CIFAR-10 recipe for a few steps on a generated stand-in data set, and the pictures
(``camdrop_kernels.viz``), which need the optional matplotlib."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels.viz import dropblock_mask

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

pytest.importorskip("torchvision")  # DropBlock and the CIFAR-10 reader: a dev dependency
import cifar10  # noqa: E402
import evidence  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_TIMM = importlib.util.find_spec("timm") is not None  # the evidence experiment's ViT part
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- the evidence experiment -----------------------------------------------------------------------
def _shipped_bytes():
    return {path: path.read_bytes() for path in evidence.SHIPPED}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """One seed, one epoch, a few hundred images: the whole code path (two worker processes, as
    the full run uses) in a few seconds, with the default outputs (run from a fresh folder: they go
    to runs/evidence there), leaving the shipped results as they were."""
    cwd = tmp_path_factory.mktemp("evidence")
    argv = ["--seeds", "1", "--epochs", "1", "--train-size", "128", "--test-size", "64", "--probe", "64",
            "--workers", "2", "--threads", "1"]  # (one thread per worker, as the full run: two cores, no spinning)
    argv += ["--vit-train-size", "128", "--vit-epochs", "1"] if HAS_TIMM else ["--no-vit"]
    shipped = _shipped_bytes()
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        assert evidence.main(argv) == 0
    finally:
        os.chdir(previous)
        torch.set_rng_state(state)
        torch.set_num_threads(threads)  # (run() sets this process's threads to --threads)
    assert _shipped_bytes() == shipped
    return cwd / "runs" / "evidence"


def test_evidence_writes_to_a_fresh_folder_by_default(tiny_report):
    assert {p.name for p in tiny_report.iterdir()} >= {"evidence.md", "evidence.json"}
    assert (tiny_report / "camdrop_masks.png").exists() == HAS_MATPLOTLIB
    args = evidence.parse_args([])
    assert (args.out, args.out_md, args.out_json, args.figure) == (
        Path("runs/evidence"), Path("runs/evidence/evidence.md"), Path("runs/evidence/evidence.json"),
        "runs/evidence/camdrop_masks.png")
    # --out names a folder for all three; a flag of its own names one file; the shipped results are
    # written when named.
    args = evidence.parse_args(["--out", "elsewhere", "--figure", ""])
    assert (args.out_md, args.out_json, args.figure) == (Path("elsewhere/evidence.md"), Path("elsewhere/evidence.json"),
                                                         "")
    shipped = evidence.parse_args(["--out", str(evidence.ROOT / "examples" / "results"), "--figure",
                                   str(evidence.ROOT / "docs" / "camdrop_masks.png")])
    assert {Path(shipped.out_md), Path(shipped.out_json), Path(shipped.figure)} == set(evidence.SHIPPED)


def test_evidence_refuses_to_overwrite_a_shipped_result_it_was_not_given(monkeypatch):
    monkeypatch.setattr(evidence, "DEFAULT_OUT", evidence.ROOT / "examples" / "results")  # (a default gone wrong)
    with pytest.raises(SystemExit, match=r"evidence.md is a shipped result; name it \(--out "):
        evidence.parse_args([])
    with pytest.raises(SystemExit, match="no saved report"):
        evidence.main(["--rerender", "--out", str(evidence.ROOT / "no-such-folder")])


def test_evidence_writes_table_and_json(tiny_report):
    table = (tiny_report / "evidence.md").read_text()
    report = json.loads((tiny_report / "evidence.json").read_text())
    assert set(report) >= {"settings", "runtime", "summary", "contrasts", "runs", "dropblock_check", "markdown"}
    assert report["markdown"] == table
    assert list(report["summary"]) == list(evidence.CONFIGS)
    header = [line for line in table.splitlines() if line.startswith("| configuration | dropped")]
    assert len(header) == 1 + HAS_TIMM and all("occluded acc" in h and "dropped" in h for h in header)  # (+ the ViT's)
    for name, entry in report["summary"].items():
        assert entry["label"] in table
        assert len(report["runs"][name]) == 1
        for key in ("plain", "occluded", "dropped_full", "dropped_train"):
            assert 0.0 <= entry[key]["mean"] <= 1.0
        if name != "none":
            assert entry["occluded_vs_none"]["n"] == 1 and entry["occluded_vs_none"]["p"] is None
    assert "Runtime:" in table and report["runtime"]["wall_seconds"] > 0
    assert [(c["a"], c["b"]) for c in report["contrasts"]] == list(evidence.CONTRASTS)
    assert "| CamDrop (C/8) − average-guided |" in table


def test_evidence_rerenders_a_saved_report(tiny_report, tmp_path):
    saved = tmp_path / "report.json"
    saved.write_text((tiny_report / "evidence.json").read_text())
    report = evidence.rerender(saved, tmp_path / "table.md")
    assert (tmp_path / "table.md").read_text() == (tiny_report / "evidence.md").read_text() == report["markdown"]


def test_evidence_measures_the_share_dropped(tiny_report):
    summary = json.loads((tiny_report / "evidence.json").read_text())["summary"]
    dropped = {name: entry["dropped_full"]["mean"] for name, entry in summary.items()}
    assert dropped["none"] == 0.0
    # The authors' seed rate drops a small fraction of what the calibrated rate drops.
    assert 0.0 < dropped["camdrop_v1"] < dropped["camdrop"] / 5
    assert 0.05 < dropped["dropblock"] < 0.15  # DropBlock at 0.1, measured from its mask
    check = json.loads((tiny_report / "evidence.json").read_text())["dropblock_check"]
    assert check["ok"] == (check["dropblock"] >= check["most_camdrop"]) and check["text"] in \
        (tiny_report / "evidence.md").read_text()


def test_evidence_self_guided_row_drops(tiny_report):
    report = json.loads((tiny_report / "evidence.json").read_text())
    entry = report["summary"]["camdrop_self"]
    assert entry["label"] == "CamDrop, self guidance (guidance='self', defaults otherwise)"
    # The label read-back check runs for the configurations whose dropping depends on the labels.
    checked = {name for name, runs in report["runs"].items() if runs[0]["readback"] is not None}
    assert checked == {"camdrop", "camdrop_all", "camdrop_v1"}
    assert set(report["summary"]["camdrop"]["readback"]) == {"eval_acc", "true_guided_acc", "wrong_guided_acc",
                                                             "follows_wrong", "eval_follows_wrong"}
    assert "Label read-back check" in report["markdown"]
    assert entry["dropped_full"]["mean"] > 0.0 and entry["dropped_train"]["mean"] > 0.0
    assert "| CamDrop (C/8) − CamDrop (self) |" in report["markdown"]
    assert "| CamDrop (self) − DropBlock |" in report["markdown"]


@pytest.mark.skipif(not HAS_TIMM, reason="timm (a dev dependency) is not installed")
def test_evidence_vit_part_rows_and_shares(tiny_report):
    """The ViT part ran every configuration, and each dropped what it should: none nothing, the
    others part of the token map (at the final rate, and under the ramp in training)."""
    report = json.loads((tiny_report / "evidence.json").read_text())
    vit = report["vit"]
    assert set(vit) >= {"settings", "runtime", "summary", "contrasts", "runs", "dropblock_check"}
    assert list(vit["summary"]) == list(evidence.VIT_CONFIGS)
    assert vit["settings"]["places"] == ["blocks.4", "blocks.5"]  # convert's default: the last third of 6
    assert {name for name, runs in vit["runs"].items() if runs[0]["readback"] is not None} == {"camdrop"}
    for name, entry in vit["summary"].items():
        assert len(vit["runs"][name]) == 1
        assert entry["label"] in report["markdown"]
        for key in ("plain", "occluded", "train"):
            assert 0.0 <= entry[key]["mean"] <= 1.0
        if name == "none":
            assert entry["dropped_full"]["mean"] == entry["dropped_train"]["mean"] == 0.0
        else:
            assert entry["dropped_full"]["mean"] > 0.0 and entry["dropped_train"]["mean"] > 0.0
    assert 0.05 < vit["summary"]["dropblock"]["dropped_full"]["mean"] < 0.15
    assert [(c["a"], c["b"]) for c in vit["contrasts"]] == list(evidence.VIT_CONTRASTS)
    assert "### CamDrop evidence, vision transformer" in report["markdown"]
    assert "Does the ViT learn the task?" in report["markdown"] and vit["dropblock_check"]["text"] in report["markdown"]
    assert report["total_runtime"]["wall_seconds"] >= vit["runtime"]["wall_seconds"] > 0


@pytest.mark.skipif(not HAS_TIMM, reason="timm (a dev dependency) is not installed")
def test_vit_configurations_are_paired_and_drop_at_the_same_places():
    args = evidence.parse_args(["--seeds", "1"])
    models = {name: evidence.build_vit(name, 3, args) for name in evidence.VIT_CONFIGS}
    reference = models["none"].state_dict()
    for name, model in models.items():
        state = model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in state)
    # DropBlock sits where convert puts CamDrop, with the same block size.
    camdrop_blocks = sorted({n.rsplit(".", 2)[0] for n, m in models["camdrop"].named_modules()
                             if isinstance(m, ck.CamDrop2d)})
    dropblock_blocks = sorted(n.rsplit(".", 1)[0] for n, m in models["dropblock"].named_modules()
                              if isinstance(m, evidence.TokenDropBlock))
    assert camdrop_blocks == dropblock_blocks == ["blocks.4", "blocks.5"]
    assert {layer.block_size for layer in ck.camdrop_layers(models["camdrop"])} == {evidence.VIT_BLOCK_SIZE}
    assert all(layer.guidance == "self" for layer in ck.camdrop_layers(models["camdrop_self"]))
    assert all(layer.classifier is models["camdrop"].head for layer in ck.camdrop_layers(models["camdrop"]))


def test_token_dropblock_is_dropblock_on_the_token_map():
    layer = evidence.TokenDropBlock(0.3, 3, prefix=1, grid=(4, 4)).train()
    tokens = torch.rand(2, 17, 8) + 0.5
    torch.manual_seed(5)
    y = layer(tokens)
    torch.manual_seed(5)
    expected = evidence.DropBlock(0.3, 3)(tokens[:, 1:].unflatten(1, (4, 4)).permute(0, 3, 1, 2))
    assert torch.equal(y[:, 0], tokens[:, 0])  # the prefix token passes
    assert torch.equal(y[:, 1:], expected.permute(0, 2, 3, 1).reshape(2, 16, 8))
    assert layer.dropblock.last_dropped_fraction > 0
    assert layer.eval()(tokens) is tokens


def test_evidence_quick_and_part_flags():
    args = evidence.parse_args(["--quick"])
    assert {key: getattr(args, key) for key in evidence.QUICK} == evidence.QUICK
    assert evidence.parse_args(["--quick", "--seeds", "2", "--vit-epochs=3"]).seeds == 2
    assert evidence.parse_args(["--quick", "--vit-epochs=3"]).vit_epochs == 3
    args = evidence.parse_args([])
    assert (args.cnn, args.vit, args.vit_train_size, args.vit_epochs) == (True, True, 8000, 4)
    assert not evidence.parse_args(["--no-vit"]).vit
    with pytest.raises(SystemExit):
        evidence.parse_args(["--no-cnn", "--no-vit"])


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib (the viz extra) is not installed")
def test_evidence_draws_the_figure(tiny_report):
    assert (tiny_report / "camdrop_masks.png").read_bytes()[:8] == PNG_MAGIC


def test_configurations_are_paired():
    """One seed: every configuration starts from the same weights."""
    args = evidence.parse_args(["--seeds", "1"])
    reference = evidence.build_model("none", 3, args).state_dict()
    for name in evidence.CONFIGS:
        state = evidence.build_model(name, 3, args).state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in state)


def test_two_cue_data_occludes_only_the_salient_pattern():
    data = evidence.make_data(7, 16, 32)
    again = evidence.make_data(7, 16, 32)
    assert torch.equal(data.test_x, again.test_x) and torch.equal(data.train_y, again.train_y)
    changed = (data.test_x != data.occluded_x).flatten(1).sum(1)
    assert torch.all(changed == 12 * 12)  # exactly the 12x12 salient pattern differs


def test_paired_t_test():
    assert evidence.t_test_p(2.776445, 4) == pytest.approx(0.05, abs=1e-6)
    assert evidence.t_test_p(2.262157, 9) == pytest.approx(0.05, abs=1e-6)
    assert evidence.t_test_p(3.0, 30) == pytest.approx(0.005390, abs=1e-6)
    assert evidence.t_test_p(0.0, 5) == pytest.approx(1.0)
    diff = evidence.paired([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])
    assert diff["mean"] == pytest.approx(0.2) and diff["t"] == pytest.approx(0.2 / (0.1 / 3 ** 0.5))
    assert evidence.paired([0.5, 0.5], [0.5, 0.5])["p"] is None


# -- the CIFAR-10 recipe ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    cifar10.write_standin(root, n_train=40, n_test=20)
    return root


@pytest.mark.parametrize("regularizer", cifar10.REGULARIZERS)
def test_cifar10_runs_a_few_steps_on_a_standin(standin, tmp_path, regularizer):
    out = tmp_path / "run.json"
    depth = "56" if regularizer == "camdrop" else "8"  # the full ResNet-56 once; the others small
    argv = ["--data", str(standin), "--skip-checksums", "--regularizer", regularizer, "--depth", depth,
            "--max-steps", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out)]
    assert cifar10.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and 0.0 <= result["test_error"] <= 100.0
    assert result["log"][-1]["rate"] == pytest.approx(0.0 if regularizer == "none" else 0.1)
    assert (result["log"][-1]["dropped_share"] > 0.0) == (regularizer != "none")


def test_cifar10_reads_the_standin_through_torchvision(standin):
    images, labels = cifar10.load_cifar10(str(standin), train=True, skip_checksums=True)
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (40,)
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        cifar10.load_cifar10(str(standin), train=True)  # the real path checks torchvision's checksums


def test_cifar10_resnet56_placement():
    model = cifar10.CifarResNet(56, 10, cifar10.regularizer_factory("camdrop", 0.1, [2, 3]))
    layers = ck.camdrop_layers(model)
    assert len(model.blocks) == 27 and len(layers) == 18
    assert [layer.drop_prob for layer in layers] == pytest.approx([0.025] * 9 + [0.1] * 9)
    assert all(layer.classifier is model.fc for layer in layers)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.85e6, rel=0.02)


# -- pictures ---------------------------------------------------------------------------------------
def test_dropblock_mask_is_torchvisions():
    drop_block2d = pytest.importorskip("torchvision.ops").drop_block2d
    x = torch.rand(4, 8, 9, 9) + 0.5
    torch.manual_seed(11)
    y = drop_block2d(x, 0.3, 3)
    torch.manual_seed(11)
    mask = dropblock_mask(x, 0.3, 3)
    assert mask.any() and torch.equal(y == 0, mask)


def test_camdrop_blocks_sit_on_the_cam_peak():
    x = torch.rand(2, 16, 8, 8)
    cam = torch.zeros(2, 8, 8)
    cam[0, 2, 5] = cam[1, 6, 1] = 1.0
    mask = ck.camdrop_mask(x, cam, torch.rand(2, 16), 0.5, 3, top_pixels=1, seed=0).any(1)
    assert mask[0, 2, 5] and mask[1, 6, 1]
    assert not mask[0, 6:, :3].any() and not mask[1, :3, 4:].any()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib (the viz extra) is not installed")
def test_viz_writes_a_png(tmp_path):
    from camdrop_kernels.viz import camdrop_figure

    x = torch.rand(3, 32, 8, 8)
    alpha = torch.rand(3, 32)
    path = tmp_path / "masks.png"
    figure = camdrop_figure(torch.rand(3, 3, 32, 32), x, ck.class_activation_map(x, alpha), alpha,
                            drop_prob=0.1, block_size=3, path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC and len(figure.axes) == 3 * 4


def test_viz_without_matplotlib_says_how_to_install(monkeypatch):
    from camdrop_kernels import viz

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    x = torch.rand(1, 8, 8, 8)
    with pytest.raises(ImportError, match=r"pip install camdrop-kernels\[viz\]"):
        viz.camdrop_figure(torch.rand(1, 1, 32, 32), x, x.mean(1), torch.ones(1, 8), block_size=3)


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, camdrop_kernels, camdrop_kernels.viz; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
