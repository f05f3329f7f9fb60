"""Does CamDrop regularise? A controlled, paired experiment that could come out either way.

The task: synthetic grey images whose class is given twice: by a large, salient pattern (its
contrast varies from sample to sample) and by a small, weaker pattern elsewhere, plus pixel
noise. A network can solve the training set from the salient pattern alone. The question is
whether a regulariser makes it also learn the small one: the "occluded" test set holds the same
test images redrawn without the salient pattern (same noise, same small pattern), so accuracy
there measures what the network learnt beyond the dominant cue; the plain test set checks that
the regulariser costs nothing where both cues are present.

The network: three conv-BN-ReLU layers (32x32 -> 8x8 map), the regulariser on the last map,
global average pooling, one linear layer, so the CAM at the regularised map is exact.

Configurations (each with the authors' "decay" schedule: the rate ramps linearly from 0 to its
final value over training): none; torchvision's DropBlock; CamDrop with the defaults; CamDrop on
all channels; the paper's average-guided control (channel-mean map, all channels); and CamDrop
with the authors' seed rate (``gamma_mode="dropblock"``, SPEC v1's default). Seeds are paired:
for each seed every configuration starts from the same initialisation, sees the batches in the
same order and uses the same data (the data seed varies with the seed). Reported: mean +- sd of
plain and occluded accuracy, the paired difference to "none" with a two-sided paired t-test, and
the share of the map each regulariser actually dropped (measured from its masks).

    python examples/evidence.py                    # the full run, about 5 minutes on 2 CPU cores
    python examples/evidence.py --seeds 1 --epochs 1 --train-size 256 --test-size 128   # a smoke run

Results go to ``--out`` (default ``runs/evidence``, created if absent): evidence.md, evidence.json
and camdrop_masks.png. The shipped results (examples/results/, docs/camdrop_masks.png) are
rewritten only when the command names them:

    python examples/evidence.py --out examples/results --figure docs/camdrop_masks.png
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import camdrop_kernels as ck  # noqa: E402
from regularizers import AverageGuided, DropBlock, dropped_share, saturated_share, set_rate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# A run writes evidence.md, evidence.json and camdrop_masks.png into --out (created if absent).
DEFAULT_OUT = Path("runs") / "evidence"
OUTPUT_NAMES = {"out_md": "evidence.md", "out_json": "evidence.json", "figure": "camdrop_masks.png"}
# The results the README shows: written only when the command line names them (or their folder).
SHIPPED = (ROOT / "examples" / "results" / "evidence.md", ROOT / "examples" / "results" / "evidence.json",
           ROOT / "docs" / "camdrop_masks.png")
FIGURE_CONFIG = "camdrop"  # the figure shows seed 0's model trained with this configuration


# -- data ------------------------------------------------------------------------------------------
@dataclass
class TwoCueData:
    """Training images and labels; the plain and the occluded test images share their labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    occluded_x: torch.Tensor
    test_y: torch.Tensor


def _cells(generator: torch.Generator, count: int, cell: int) -> torch.Tensor:
    """``count`` random 3x3 patterns of +-1 cells, each cell ``cell`` pixels wide."""
    pattern = torch.randint(0, 2, (count, 3, 3), generator=generator).float() * 2 - 1
    return pattern.repeat_interleave(cell, 1).repeat_interleave(cell, 2)


def _paste(canvas: torch.Tensor, patterns: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> None:
    """Add patterns[i] (n, h, w) into canvas[i] (n, H, W) with its corner at (top[i], left[i])."""
    n, h, w = patterns.shape
    rows = (top[:, None] + torch.arange(h))[:, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, :]
    canvas[torch.arange(n)[:, None, None], rows, cols] += patterns


def _render(generator: torch.Generator, n: int, salient: torch.Tensor, small: torch.Tensor, size: int,
            contrast: Tuple[float, float], small_amplitude: float, noise: float):
    """n samples: (plain, occluded, labels). The salient pattern goes into one random quadrant
    (random offset inside it), the small one into another, so they never overlap; the occluded
    image is the plain one without the salient pattern."""
    classes, big, little = salient.shape[0], salient.shape[-1], small.shape[-1]
    half = size // 2
    labels = torch.randint(0, classes, (n,), generator=generator)
    quadrant_big = torch.randint(0, 4, (n,), generator=generator)
    quadrant_small = (quadrant_big + torch.randint(1, 4, (n,), generator=generator)) % 4
    offset_big = torch.randint(0, half - big + 1, (n, 2), generator=generator)
    offset_small = torch.randint(0, half - little + 1, (n, 2), generator=generator)
    amplitude = contrast[0] + (contrast[1] - contrast[0]) * torch.rand(n, generator=generator)
    occluded = noise * torch.randn(n, size, size, generator=generator)
    _paste(occluded, small_amplitude * small[labels], (quadrant_small // 2) * half + offset_small[:, 0],
           (quadrant_small % 2) * half + offset_small[:, 1])
    plain = occluded.clone()
    _paste(plain, amplitude[:, None, None] * salient[labels], (quadrant_big // 2) * half + offset_big[:, 0],
           (quadrant_big % 2) * half + offset_big[:, 1])
    return plain[:, None], occluded[:, None], labels


def make_data(seed: int, n_train: int, n_test: int, size: int = 32, classes: int = 4,
              contrast: Tuple[float, float] = (0.5, 2.0), small_amplitude: float = 1.1,
              noise: float = 1.0) -> TwoCueData:
    """The two-cue data set of one seed: class patterns, training set, plain and occluded test sets.

    Per class, a salient pattern of 3x3 cells of size/8 pixels (12x12 at 32) and a small one of
    3x3 cells of size/16 pixels (6x6 at 32); both drawn from ``seed``, like every sample."""
    if size % 16:
        raise ValueError(f"size must be a multiple of 16; got {size}")
    generator = torch.Generator().manual_seed(seed)
    salient = _cells(generator, classes, size // 8)
    small = _cells(generator, classes, size // 16)
    train_x, _, train_y = _render(generator, n_train, salient, small, size, contrast, small_amplitude, noise)
    test_x, occluded_x, test_y = _render(generator, n_test, salient, small, size, contrast, small_amplitude, noise)
    return TwoCueData(train_x, train_y, test_x, occluded_x, test_y)


# -- model -----------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """conv-BN-ReLU (16) -> pool -> (32) -> pool -> (64) -> regulariser -> global average pool -> linear.

    The last map is size/4 wide (8x8 at 32). ``regularizer`` builds the regulariser from the
    classifier (CamDrop binds to it); None means none. Building it draws no random numbers, so one
    seed gives every configuration the same initial weights."""

    def __init__(self, classes: int, regularizer: Optional[Callable[[nn.Linear], nn.Module]] = None,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.body = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(b, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        )
        self.fc = nn.Linear(c, classes)
        self.reg = regularizer(self.fc) if regularizer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.reg(self.body(x)).mean((2, 3)))


@dataclass
class Config:
    """One configuration: a table label and how to build its regulariser (None: no regulariser)."""

    label: str
    short: str
    build: Optional[Callable[[nn.Linear, argparse.Namespace], nn.Module]]
    rate: Callable[[argparse.Namespace], float] = lambda args: args.drop_prob


CONFIGS: Dict[str, Config] = {
    "none": Config("none", "none", None, lambda a: 0.0),
    "dropblock": Config("DropBlock (torchvision drop_block2d)", "DropBlock",
                        lambda fc, a: DropBlock(a.dropblock_prob, a.block_size), lambda a: a.dropblock_prob),
    "camdrop": Config("CamDrop, defaults (n' = C/8, eligible rate)", "CamDrop (C/8)",
                      lambda fc, a: ck.CamDrop2d(a.drop_prob, a.block_size, classifier=fc)),
    "camdrop_all": Config("CamDrop, all channels", "CamDrop (all channels)",
                          lambda fc, a: ck.CamDrop2d(a.drop_prob, a.block_size, classifier=fc, top_channels=1.0)),
    "average": Config("average-guided control (channel mean, all channels)", "average-guided",
                      lambda fc, a: AverageGuided(a.drop_prob, a.block_size)),
    "camdrop_v1": Config("CamDrop, authors' seed rate (gamma_mode='dropblock')", "CamDrop (authors' rate)",
                         lambda fc, a: ck.CamDrop2d(a.drop_prob, a.block_size, classifier=fc, gamma_mode="dropblock")),
}


def build_model(name: str, seed: int, args: argparse.Namespace) -> SmallCNN:
    """The configuration's network with the seed's initial weights."""
    torch.manual_seed(seed)
    build = CONFIGS[name].build
    return SmallCNN(args.classes, None if build is None else (lambda fc: build(fc, args)))


def _guided(model: nn.Module, labels: torch.Tensor):
    """``ck.targets`` for models with CamDrop layers; nothing for the others."""
    return ck.targets(model, labels) if ck.camdrop_layers(model) else contextlib.nullcontext()


# -- training ---------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


@torch.no_grad()
def share_at_full_rate(model: SmallCNN, x: torch.Tensor, y: torch.Tensor, drop_prob: float,
                       seed: int) -> Tuple[float, float]:
    """(share dropped, share of samples saturated) by the trained model's regulariser at its final
    rate, on the features of ``x`` computed in eval mode (batch norm's statistics untouched)."""
    if isinstance(model.reg, nn.Identity):
        return 0.0, 0.0
    model.eval()
    features = model.body(x)
    model.reg.train()
    set_rate(model, drop_prob)
    with torch.random.fork_rng(devices=[]), _guided(model, y):
        torch.manual_seed(seed)
        model.reg(features)
    model.eval()
    return float(dropped_share(model)), float(saturated_share(model))


def train_and_evaluate(name: str, seed: int, data: TwoCueData, args: argparse.Namespace) -> Tuple[dict, SmallCNN]:
    """Train one configuration on one seed; returns its measurements and the trained model."""
    model = build_model(name, seed, args)
    final_rate = CONFIGS[name].rate(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(data.train_x) // args.batch_size
    total = max(1, args.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2 * args.lr, total_steps=total)
    order = torch.Generator().manual_seed(seed)  # the batch order: the same for every configuration
    wall, cpu = time.perf_counter(), time.process_time()
    shares: List[torch.Tensor] = []
    step = 0
    for _ in range(args.epochs):
        model.train()
        permutation = torch.randperm(len(data.train_x), generator=order)
        for k in range(steps_per_epoch):
            index = permutation[k * args.batch_size:(k + 1) * args.batch_size]
            x, y = data.train_x[index], data.train_y[index]
            set_rate(model, ck.linear_ramp(step, total, final_rate))
            with _guided(model, y):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            shares.append(dropped_share(model))
            step += 1
    train_seconds = time.perf_counter() - wall
    dropped_full, saturated = share_at_full_rate(model, data.test_x[:args.probe], data.test_y[:args.probe],
                                                 final_rate, seed)
    result = {
        "seed": seed,
        "plain": accuracy(model, data.test_x, data.test_y),
        "occluded": accuracy(model, data.occluded_x, data.test_y),
        "dropped_train": float(torch.stack(shares).mean()) if shares else 0.0,
        "dropped_full": dropped_full,
        "saturated_full": saturated,
        "final_rate": final_rate,
        "train_seconds": train_seconds,
        "cpu_seconds": time.process_time() - cpu,
    }
    return result, model


# -- statistics -------------------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_test_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def paired(values: Sequence[float], baseline: Sequence[float]) -> dict:
    """Paired differences values - baseline: mean, sd, t and the two-sided p (None with < 2 pairs,
    or when every difference is 0)."""
    diffs = [v - b for v, b in zip(values, baseline)]
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    if n < 2 or (sd == 0.0 and mean == 0.0):
        return {"mean": mean, "sd": sd, "t": None, "p": None, "n": n}
    t = math.inf if sd == 0.0 else mean / (sd / math.sqrt(n))
    return {"mean": mean, "sd": sd, "t": t if math.isfinite(t) else None, "p": t_test_p(abs(t), n - 1), "n": n}


# -- report ------------------------------------------------------------------------------------------
def summarise(runs: Dict[str, List[dict]]) -> Dict[str, dict]:
    """Per configuration: mean +- sd of each measurement and paired differences to "none"."""
    baseline = runs.get("none")
    summary = {}
    for name, results in runs.items():
        entry = {"label": CONFIGS[name].label, "short": CONFIGS[name].short, "final_rate": results[0]["final_rate"]}
        for key in ("plain", "occluded", "dropped_train", "dropped_full", "saturated_full", "train_seconds"):
            mean, sd = mean_sd([r[key] for r in results])
            entry[key] = {"mean": mean, "sd": sd}
        if baseline is not None and name != "none":
            for key in ("plain", "occluded"):
                entry[f"{key}_vs_none"] = paired([r[key] for r in results], [r[key] for r in baseline])
        summary[name] = entry
    return summary


# The paper's questions beyond "does it help at all": is it the class guidance (CAM vs the channel
# mean), the channel selection (C/8 vs all), or merely dropping blocks (vs DropBlock)?
CONTRASTS = (("camdrop", "average"), ("camdrop_all", "average"), ("camdrop", "camdrop_all"), ("camdrop", "dropblock"))


def contrasts(runs: Dict[str, List[dict]]) -> List[dict]:
    """Paired differences between regularisers (those of CONTRASTS that both ran)."""
    out = []
    for a, b in CONTRASTS:
        if a in runs and b in runs:
            out.append({"a": a, "b": b, **{key: paired([r[key] for r in runs[a]], [r[key] for r in runs[b]])
                                          for key in ("plain", "occluded")}})
    return out


def _verdict(diff: Optional[dict], level: float = 0.05) -> str:
    if diff is None:
        return ""
    if diff["p"] is None:
        return "n/a (one seed)" if diff["n"] < 2 else "identical"
    if diff["p"] >= level:
        return "no significant difference"
    return "better" if diff["mean"] > 0 else "worse"


def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['sd']:.1f}"


def _diff(diff: Optional[dict]) -> str:
    if diff is None:
        return "—"
    p = "n/a" if diff["p"] is None else f"{diff['p']:.3f}"
    return f"{100 * diff['mean']:+.1f} (p {p})"


def dropblock_check(summary: Dict[str, dict]) -> Optional[dict]:
    """Did DropBlock drop at least as much as every CamDrop configuration (at the final rates, mean
    over seeds)? The comparison is only fair if it did. None when either side is missing."""
    camdrop = {n: e["dropped_full"]["mean"] for n, e in summary.items() if n not in ("none", "dropblock")}
    if "dropblock" not in summary or not camdrop:
        return None
    dropblock = summary["dropblock"]["dropped_full"]["mean"]
    most = max(camdrop, key=camdrop.get)
    ok = dropblock >= camdrop[most]
    text = (f"DropBlock dropped {100 * dropblock:.2f}% of the map at its final rate, the most-dropping CamDrop "
            f"configuration ({summary[most]['label']}) {100 * camdrop[most]:.2f}%: "
            + ("at least as much, as the comparison requires." if ok else
               "LESS, so the comparison is unfair to DropBlock: raise --dropblock-prob."))
    return {"ok": ok, "dropblock": dropblock, "most_camdrop": camdrop[most], "text": text}


def markdown(summary: Dict[str, dict], settings: dict, runtime: dict, pairs: Sequence[dict] = ()) -> str:
    """The results as a Markdown section: settings, one row per configuration, the contrasts
    between regularisers, the DropBlock check, runtime."""
    seeds = settings["seeds"]
    lines = [
        f"### CamDrop evidence: two-cue images, {len(seeds)} paired seed{'s' * (len(seeds) != 1)}",
        "",
        f"{settings['train_size']} training / {settings['test_size']} test images of {settings['size']}x"
        f"{settings['size']}, {settings['classes']} classes, {settings['epochs']} epochs; regulariser on the "
        f"{settings['size'] // 4}x{settings['size'] // 4}x64 map, block {settings['block_size']}, final rate "
        f"{settings['drop_prob']} (DropBlock {settings['dropblock_prob']}) reached by a linear ramp. Accuracy in %, "
        "mean ± sd over seeds; Δ = paired difference to \"none\" in points, two-sided paired t-test. "
        "Dropped = share of the map's elements dropped at the final rate by the trained model (in training, "
        "under the ramp, in brackets); saturated = share of samples whose seed rate hit 1.",
        "",
        "| configuration | dropped % (training) | saturated | plain acc | Δ plain (p) | occluded acc | "
        "Δ occluded (p) | occluded verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in summary.items():
        dropped = f"{100 * entry['dropped_full']['mean']:.2f} ({100 * entry['dropped_train']['mean']:.2f})"
        saturated = f"{100 * entry['saturated_full']['mean']:.0f}%" if name not in ("none", "dropblock") else "—"
        lines.append(f"| {entry['label']} | {dropped} | {saturated} | {_pct(entry['plain'])} | "
                     f"{_diff(entry.get('plain_vs_none'))} | {_pct(entry['occluded'])} | "
                     f"{_diff(entry.get('occluded_vs_none'))} | {_verdict(entry.get('occluded_vs_none'))} |")
    if pairs:
        lines += ["", "| paired contrast A − B | Δ plain (p) | Δ occluded (p) | occluded: A is |",
                  "| --- | --- | --- | --- |"]
        for pair in pairs:
            lines.append(f"| {summary[pair['a']]['short']} − {summary[pair['b']]['short']} | "
                         f"{_diff(pair['plain'])} | {_diff(pair['occluded'])} | {_verdict(pair['occluded'])} |")
    check = dropblock_check(summary)
    if check is not None:
        lines += ["", check["text"]]
    lines += [
        "",
        f"Runtime: {runtime['wall_seconds']:.0f} s wall ({runtime['cpu_seconds']:.0f} s CPU in the runs) with "
        f"{settings['workers']} worker{'s' * (settings['workers'] != 1)} of {settings['threads']} "
        f"thread{'s' * (settings['threads'] != 1)}, torch {torch.__version__}. "
        f"Command: `{settings['command']}`",
        "",
    ]
    return "\n".join(lines)


# -- figure ------------------------------------------------------------------------------------------
@torch.no_grad()
def save_figure(model: SmallCNN, data: TwoCueData, args: argparse.Namespace, path: Path, count: int = 4) -> bool:
    """Draw the input, CAM, CamDrop's and DropBlock's dropped masks for ``count`` test images with
    ``model`` (trained with CamDrop); False (and a note) if matplotlib is not installed."""
    try:
        from camdrop_kernels.viz import camdrop_figure
        model.eval()
        x, y = data.test_x[:count], data.test_y[:count]
        features = model.body(x)
        alpha = ck.channel_importance(model.fc.weight, y, features.shape[1])
        cam = ck.class_activation_map(features, alpha)
        path.parent.mkdir(parents=True, exist_ok=True)
        camdrop_figure(x, features, cam, alpha, drop_prob=args.drop_prob, block_size=args.block_size,
                       dropblock_prob=args.dropblock_prob, seed=2019, path=path,
                       row_labels=[f"class {int(c)}" for c in y])
    except ImportError as error:
        print(f"figure skipped: {error}", file=sys.stderr)
        return False
    return True


# -- command line ---------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="paired seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32, help="image side (a multiple of 16); the map is size/4")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--drop-prob", type=float, default=0.1, help="CamDrop's final rate")
    parser.add_argument("--dropblock-prob", type=float, default=None,
                        help="DropBlock's final rate (default: --drop-prob; it must drop at least as much as CamDrop)")
    parser.add_argument("--block-size", type=int, default=3)
    parser.add_argument("--probe", type=int, default=500, help="test images to measure the share dropped on")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes running (seed, configuration) jobs side by side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per process (one per worker holds up best on shared cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for evidence.md, evidence.json and camdrop_masks.png, created if absent "
                             f"(default: {DEFAULT_OUT}; the shipped examples/results/ only when named here)")
    parser.add_argument("--out-md", type=Path, default=None, help="the table (default: OUT/evidence.md)")
    parser.add_argument("--out-json", type=Path, default=None, help="the report (default: OUT/evidence.json)")
    parser.add_argument("--figure", default=None, help="PNG path, '' for none (default: OUT/camdrop_masks.png)")
    parser.add_argument("--rerender", action="store_true",
                        help="no training: recompute the table from the runs saved in --out-json")
    args = parser.parse_args(argv)
    resolve_outputs(args)
    if args.dropblock_prob is None:
        args.dropblock_prob = args.drop_prob
    if "none" not in args.configs:
        args.configs.insert(0, "none")
    args.command = "python examples/evidence.py" + ("" if argv is None and len(sys.argv) < 2 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    return args


def resolve_outputs(args: argparse.Namespace) -> None:
    """Fill in the output paths from ``--out``, and refuse to overwrite a shipped result that the
    command line did not name (itself, or its folder through ``--out``)."""
    explicit_out = args.out is not None
    args.out = args.out if explicit_out else DEFAULT_OUT
    for key, name in OUTPUT_NAMES.items():
        value = getattr(args, key)
        named = value is not None or explicit_out
        if value is None:
            value = args.out / name
            setattr(args, key, value if key != "figure" else str(value))
        if value and not named and Path(value).resolve() in {p.resolve() for p in SHIPPED}:
            raise SystemExit(f"evidence.py: {value} is a shipped result; name it (--out {Path(value).parent}) to "
                             "overwrite it, or write elsewhere with --out DIR")


def _shown(value):
    """Paths as the report shows them: relative to the repository when inside it."""
    if isinstance(value, (str, Path)) and value and Path(value).is_absolute():
        path = Path(value)
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return str(value) if isinstance(value, Path) else value


@functools.lru_cache(maxsize=1)
def _seed_data(seed: int, n_train: int, n_test: int, size: int, classes: int) -> TwoCueData:
    """The data of one seed, kept while a process works through that seed's configurations."""
    return make_data(1000 + seed, n_train, n_test, size, classes)


def run_job(job: Tuple[int, str], args: argparse.Namespace) -> Tuple[int, str, dict, Optional[dict]]:
    """One (seed, configuration) run, in this process or a worker: (seed, name, measurements, the
    trained weights if this is the run the figure is drawn from, else None)."""
    seed, name = job
    torch.set_num_threads(args.threads)
    data = _seed_data(seed, args.train_size, args.test_size, args.size, args.classes)
    result, model = train_and_evaluate(name, seed, data, args)
    keep = seed == 0 and name == FIGURE_CONFIG
    return seed, name, result, (model.state_dict() if keep else None)


def _jobs(args: argparse.Namespace):
    """Run every (seed, configuration), in ``args.workers`` single-process workers when > 1, and
    yield the results as they finish. Every run seeds itself, so the worker that runs it and the
    order do not change its numbers."""
    jobs = [(seed, name) for seed in range(args.seeds) for name in args.configs]
    if args.workers <= 1:
        yield from (run_job(job, args) for job in jobs)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with context.Pool(args.workers) as pool:
        yield from pool.imap_unordered(functools.partial(run_job, args=args), jobs)


def run(args: argparse.Namespace) -> dict:
    """Every configuration on every seed; writes the table, the JSON and the figure; returns the JSON."""
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    runs: Dict[str, Dict[int, dict]] = {name: {} for name in args.configs}
    figure_state = None
    for seed, name, result, state in _jobs(args):
        runs[name][seed] = result
        figure_state = state if state is not None else figure_state
        print(f"seed {seed} {name:12s} plain {100 * result['plain']:5.1f}  occluded {100 * result['occluded']:5.1f}"
              f"  dropped {100 * result['dropped_full']:5.2f}%  {result['train_seconds']:5.1f} s", flush=True)
    ordered = {name: [by_seed[seed] for seed in sorted(by_seed)] for name, by_seed in runs.items()}
    runtime = {"wall_seconds": time.perf_counter() - wall,
               "cpu_seconds": sum(r["cpu_seconds"] for results in ordered.values() for r in results)}
    settings = {key: _shown(value) for key, value in vars(args).items()}
    settings["seeds"] = list(range(args.seeds))
    report = analyse(settings, runtime, ordered)
    if figure_state is not None and args.figure:
        model = build_model(FIGURE_CONFIG, 0, args)
        model.load_state_dict(figure_state)
        data = _seed_data(0, args.train_size, args.test_size, args.size, args.classes)
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        report["figure"] = _shown(args.figure) if save_figure(model, data, args, Path(args.figure)) else None
    write(report, args.out_md, args.out_json)
    return report


def analyse(settings: dict, runtime: dict, runs: Dict[str, List[dict]]) -> dict:
    """The report from the raw runs: summary, contrasts, DropBlock check and the Markdown table."""
    summary = summarise(runs)
    pairs = contrasts(runs)
    return {"settings": settings, "runtime": runtime, "summary": summary, "contrasts": pairs, "runs": runs,
            "dropblock_check": dropblock_check(summary), "markdown": markdown(summary, settings, runtime, pairs)}


def write(report: dict, out_md: Path, out_json: Path) -> None:
    """Write the table and the JSON, and print the table."""
    for path, text in ((out_md, report["markdown"]), (out_json, json.dumps(report, indent=1))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(report["markdown"])


def rerender(path: Path, out_md: Path) -> dict:
    """Recompute the summary and the table from a saved report's raw runs (no training): for
    changing the report's form without a new run. The JSON is rewritten in place."""
    saved = json.loads(path.read_text())
    report = analyse(saved["settings"], saved["runtime"], saved["runs"])
    report = {**report, **({"figure": saved["figure"]} if "figure" in saved else {})}
    write(report, out_md, path)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.rerender:
        if not Path(args.out_json).is_file():
            raise SystemExit(f"evidence.py --rerender: no saved report at {args.out_json} (run the experiment first, "
                             "or pass --out examples/results to re-render the shipped one)")
        rerender(args.out_json, args.out_md)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
