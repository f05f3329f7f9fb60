"""The benchmark suite still runs: every benchmark once, on tiny shapes, with its summary."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_suite_runs(tmp_path):
    env = dict(os.environ, CAMDROP_BENCH_SMOKE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "-q", "-p", "no:cacheprovider",
         f"--benchmark-json={tmp_path / 'bench.json'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "camdrop_kernels benchmark summary" in out
    assert "Headline" in out and "Saved for backward" in out
    assert "| block 5]" in out  # the smoke shape (2, 16, 9, 9): convert's block size for a 9x9 map
    assert (tmp_path / "bench.json").stat().st_size > 0


def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.sh, the script the first lent card runs, works end to end: every stage
    on the CPU at tiny sizes (CAMDROP_GPU_DRY_RUN=1), every contender timed, every resnet50 variant
    stepped, and the summary parsed from what the stages left."""
    import json

    env = dict(os.environ, CAMDROP_GPU_DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    names = {key.split(" | ", 1)[1] for key in bench["results"]}
    for mode in ("eligible", "dropblock", "eligible, bf16 cam"):  # (the last: the bound layer's bf16 CAM)
        assert {f"camdrop[{mode}]", f"camdrop[{mode}] fwd+bwd", f"camdrop[{mode}] fixed seed", f"mask build[{mode}]",
                f"state only[{mode}]", f"apply[{mode}]"} <= names
    assert {"copy", "multiply", "multiply fwd+bwd", "multiply (scalar)", "multiply (scalar) fwd+bwd", "F.dropout",
            "timm drop_block_2d[coupled]",
            "timm drop_block_2d[per channel]", "torchvision drop_block2d"} <= names
    assert {key.split(" | ", 1)[0] for key in bench["results"]} == {"contiguous", "channels_last"}
    assert all(r["event_us"] > 0 for r in bench["results"].values())
    shares = {key: r["dropped"] for key, r in bench["results"].items() if r.get("dropped") is not None}
    assert len(shares) == 2 * 13 and all(0 <= v <= 1 for v in shares.values())  # every forward but the floors
    assert shares["contiguous | F.dropout"] > 0 and shares["channels_last | camdrop[eligible]"] > 0
    # (layouts) x (gamma modes and CAMs) x (targets each: event timings only in a dry run, which has no graphs)
    assert len(bench["targets"]) == 2 * 3 * 7
    resnet = json.loads((tmp_path / "resnet.json").read_text())
    assert all("step_ms" in r for r in resnet["results"].values()), resnet["results"]
    assert all(r["vs_plain"] > 0 for kind, r in resnet["results"].items() if kind != "plain")
    compiled = json.loads((tmp_path / "resnet_compiled.json").read_text())
    assert compiled["compiled"] and all("step_ms" in r for r in compiled["results"].values()), compiled["results"]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["host_us"] and probe["state"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "targets (issue 14" in summary and "resnet50" in summary and "torch.compile" in summary
    assert "host us per call" in summary
    assert "tests: " in summary and "no summary line" not in summary


def test_gpu_probe_dry_run(tmp_path):
    """benchmarks/gpu_probe.py, the second look a card gets (host time per call, the state kernel's
    variants, the resnet step's syncs and profile), runs every section on the CPU (dry run)."""
    import json

    env = dict(os.environ, CAMDROP_GPU_DRY_RUN="1", TRITON_INTERPRET="1", OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, "benchmarks/gpu_probe.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert not [key for key in probe if key.endswith("error")], probe
    assert all(isinstance(v, float) and v > 0 for v in probe["host_us"].values()), probe["host_us"]
    assert probe["state"] and all("us" in v and v["repeatable"] for v in probe["state"].values()), probe["state"]
    resnet = probe["resnet"]
    assert resnet["layers"] and resnet["plain step ms (synced)"] > 0 and resnet["camdrop step ms (synced)"] > 0
    assert (tmp_path / "probe_cprofile.txt").stat().st_size > 0


def test_paired_ratios_script_runs():
    """benchmarks/paired.py, the source of RESULTS.md's paired ratios, still runs (two rounds)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import paired
    finally:
        sys.path.pop(0)
    out = paired.main(reps=2, threads=1)
    assert {"forward 8x1024x7x7", "forward+backward 16x256x28x28 CL", "tiny"} <= set(out)
    assert all(r["ratios"]["multiply"] == 1.0 for k, r in out.items() if k not in ("tiny", "bound layers"))
    assert out["tiny"]["ratios"]["camdrop"] > 0
    assert out["bound layers"]["ratio"] > 0  # bound CamDrop layers against nn.Dropout layers, per layer
    # convert's block size for the map's stage, and the share dropped beside each forward's time.
    assert [out[f"forward {s}"]["block_size"] for s in ("16x256x28x28", "8x512x14x14", "8x1024x7x7")] == [7, 5, 3]
    assert all(out[key]["dropped"]["eligible"] > 0.01 for key in out if key.startswith("forward "))


def test_every_benchmark_shape_drops_at_its_block_size():
    """A benchmark that drops nothing proves nothing: at every shape the suite times (CPU and GPU
    lists), CamDrop at the block size the suite uses there (convert's for the map's stage) drops.
    At (8, 1024, 7, 7) the former block 7 had one valid centre and dropped 0%."""
    code = (
        "import json, torch, camdrop_kernels as ck\n"
        "import cases\n"
        "from contenders import block_size_for, dropped_share\n"
        "from conftest import make_inputs\n"
        "shapes = sorted(set(map(tuple, cases.CPU_SHAPES + cases.GPU_STAGES + [cases.GPU_TARGET] + cases.ND_SHAPES)))\n"
        "out = {}\n"
        "for shape in shapes:\n"
        "    x, cam, alpha = make_inputs(shape, torch.float32, 'contiguous')\n"
        "    fn = {3: ck.camdrop1d, 4: ck.camdrop, 5: ck.camdrop3d}[len(shape)]\n"
        "    block = block_size_for(shape)\n"
        "    out['x'.join(map(str, shape))] = (block, dropped_share(fn(x, cam, alpha, 0.1, block)))\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, CAMDROP_BENCH_SMOKE="0", CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    shares = json.loads(proc.stdout.splitlines()[-1])
    assert shares["8x1024x7x7"][0] == 3 and shares["8x512x14x14"][0] == 5 and shares["16x256x28x28"][0] == 7
    assert all(share > 0.01 for _, share in shares.values()), shares
