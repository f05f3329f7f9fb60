"""CamDrop on real data: scikit-learn's handwritten digits, clean and with a patch blanked.

The data: ``sklearn.datasets.load_digits`` (1,797 greyscale 8x8 digits, 10 classes, ink 0..16 on
a 0 background), shipped inside the scikit-learn wheel: nothing is downloaded. Per seed a
stratified split gives 1,000 training digits (each class in proportion: 97 to 102 of
each) and the other 797 as the test set.
No augmentation: the networks never see a blanked patch in training.

The network: the digits are scaled to 0..1 and upsampled bilinearly to 32x32, then three
conv-BN-ReLU layers with two 2x max-pools (the network of ``evidence.py``) give an 8x8x64 map,
the regulariser sits on that map, then global average pooling and one linear layer, so the CAM at
the regularised map is exact. Why upsample: without it two poolings leave a 2x2 map, too small for
a block; 8x8 gives blocks of 3 room (36 block positions) and matches the synthetic experiment, so
its measured shares carry over. One map pixel is one original pixel apart.

Configurations, all at the final rate 0.1 (block 3 where there are blocks), reached by the
authors' "decay" schedule (a linear ramp from 0 over the whole training):
none; CamDrop bound to the classifier (defaults: n' = C/8, the eligible seed rate); CamDrop with
``guidance="self"`` (the map's own channel means, no labels); DropBlock (torchvision's
``drop_block2d``, through ``regularizers.DropBlock``); element-wise dropout (``F.dropout``).

Evaluation, on the same test digits for every configuration of a seed: clean; with a random 3x3
patch of the 8x8 digit blanked (set to 0, the background; its position uniform over the 36 that
fit, drawn per digit from the seed); and with the most class-discriminative 3x3 patch blanked,
chosen by a model none of the compared networks is: a logistic regression on the 64 pixels fitted
to the seed's training digits, whose evidence for the true class at pixel i is x_i (w_yi - mean_k
w_ki); the patch with the largest summed evidence is blanked. A 3x3 patch of the digit is the
input-space counterpart of one 3x3 block on the 8x8 map.

Seeds are paired: per seed every configuration gets the same split, initial weights, batch order
and occluded test sets. Reported: mean +- sd of each accuracy, the share of the map each
regulariser dropped (from its masks: at the final rate on the trained model, and as trained under
the ramp), paired differences to "none" and between regularisers with two-sided paired t-tests.

    python examples/digits.py                        # the full run: 5 seeds, 25 trainings, minutes on 2 cores
    python examples/digits.py --quick --out /tmp/q   # a smoke run (seconds)

A confirmatory run names fresh seeds and its primary contrasts before it starts (``--first-seed``,
``--primary A:B``, on the discriminative patch): the report then gives those contrasts' 95%
intervals and Holm-adjusted p over the declared family (examples/results/digits_confirmatory_plan.md).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import resource
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
from evidence import SmallCNN, accuracy, mean_sd, paired, percent, t_test_p  # noqa: E402  (the same network and statistics)
from camdrop_kernels.nn import CamDropNd  # noqa: E402
from regularizers import DropBlock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "runs" / "digits"
NAMES = ("digits.md", "digits.json")
OCCLUSIONS = ("clean", "random", "discriminative")
OCCLUSION_LABELS = {"clean": "clean", "random": "random patch", "discriminative": "discriminative patch"}


# -- data ------------------------------------------------------------------------------------------
@dataclass
class Split:
    """One seed's data: training inputs and the test inputs clean and occluded (digits: 8x8 in
    0..1; ``mnist_1d.py``: signals of 40 samples)."""

    train_x: torch.Tensor          # (n, *S)
    train_y: torch.Tensor
    test: Dict[str, torch.Tensor]  # occlusion name -> (m, *S)
    test_y: torch.Tensor
    patches: Dict[str, torch.Tensor]  # occlusion name -> (m, len(S)) first index of the blanked patch
    linear: Dict[str, float]       # the logistic regression's own accuracies (context)
    patch: int                     # the blanked patch's side


@functools.lru_cache(maxsize=1)
def _load_digits() -> Tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # the data ships in the wheel (no download)

    digits = load_digits()
    return (torch.tensor(digits.images, dtype=torch.float32) / 16.0,
            torch.tensor(digits.target, dtype=torch.int64))


def stratified_split(y: torch.Tensor, n_train: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test): per class a random share n_train / len(y) (rounded; the remainder
    filled from the largest fractional parts, ties by class index) goes to training."""
    classes = int(y.max()) + 1
    counts = torch.bincount(y, minlength=classes).tolist()
    exact = [c * n_train / len(y) for c in counts]
    take = [math.floor(e) for e in exact]
    for k in sorted(range(classes), key=lambda k: (-(exact[k] - take[k]), k))[:n_train - sum(take)]:
        take[k] += 1
    train, test = [], []
    for k in range(classes):
        members = torch.nonzero(y == k).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        train.append(members[:take[k]])
        test.append(members[take[k]:])
    train, test = torch.cat(train), torch.cat(test)
    return train[torch.randperm(len(train), generator=generator)], test[torch.randperm(len(test), generator=generator)]


def blank(images: torch.Tensor, corners: torch.Tensor, patch: int) -> torch.Tensor:
    """A copy of images (m, 8, 8) with the patch x patch square at corners[i] (row, col) set to 0."""
    out = images.clone()
    rows = corners[:, 0, None] + torch.arange(patch)
    cols = corners[:, 1, None] + torch.arange(patch)
    index = torch.arange(len(images))[:, None, None]
    out[index, rows[:, :, None], cols[:, None, :]] = 0.0
    return out


def discriminative_corners(images: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                           patch: int) -> torch.Tensor:
    """Per image, the corner of the patch x patch square with the largest summed evidence for the
    true class under a linear model with weight (K, 64): x_i (w_yi - mean_k w_ki). Ties: the first
    in row-major order."""
    side = images.shape[-1]
    centred = weight - weight.mean(0, keepdim=True)
    evidence = images.flatten(1) * centred[labels]
    sums = F.avg_pool2d(evidence.view(-1, 1, side, side), patch, stride=1).flatten(1)  # (m, positions)
    best = sums.argmax(1)
    width = side - patch + 1
    return torch.stack([best // width, best % width], 1)


def make_digits(seed: int, n_train: int, n_test: Optional[int], patch: int) -> Split:
    """The seed's split and its three test sets (the same for every configuration)."""
    from sklearn.linear_model import LogisticRegression

    images, labels = _load_digits()
    generator = torch.Generator().manual_seed(10_000 + seed)
    train, test = stratified_split(labels, n_train, generator)
    if n_test is not None:
        test = test[:n_test]
    train_x, train_y, test_x, test_y = images[train], labels[train], images[test], labels[test]
    side = images.shape[-1]
    fit = LogisticRegression(max_iter=2000).fit(train_x.flatten(1).double().numpy(), train_y.numpy())
    weight = torch.tensor(fit.coef_, dtype=torch.float32)
    corners = {
        "random": torch.randint(0, side - patch + 1, (len(test), 2), generator=generator),
        "discriminative": discriminative_corners(test_x, test_y, weight, patch),
    }
    sets = {"clean": test_x, **{name: blank(test_x, c, patch) for name, c in corners.items()}}
    linear = {name: float((torch.tensor(fit.predict(x.flatten(1).double().numpy())) == test_y).float().mean())
              for name, x in sets.items()}
    return Split(train_x, train_y, sets, test_y, corners, linear, patch)


def describe(seed: int, data: Split) -> dict:
    """What the report keeps of a seed's data: the logistic regression's accuracies, the share of
    test digits whose blanked patch held ink (changed the digit), where the discriminative patch
    fell (counts per corner, row-major), and SHA-256 digests (first 16 hex digits) of the training
    labels and the three test sets, to check that a rerun used the same data."""
    width = data.test["clean"].shape[-1] - data.patch + 1  # corners per row (6 for 3x3 on 8x8)
    corners = data.patches["discriminative"]
    tensors = {"train_y": data.train_y, **{f"test_{k}": v for k, v in data.test.items()}}
    return {"seed": seed, "linear": data.linear,
            "changed": {k: float((data.test[k] != data.test["clean"]).flatten(1).any(1).float().mean())
                        for k in OCCLUSIONS if k != "clean"},
            "discriminative_corner_counts": torch.bincount(corners[:, 0] * width + corners[:, 1],
                                                           minlength=width * width).tolist(),
            "sha256": {k: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]
                       for k, t in tensors.items()}}


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """(m, 8, 8) digits -> (m, 1, size, size), bilinear (align_corners=False)."""
    return F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)


# -- regularisers ----------------------------------------------------------------------------------
class Dropout(nn.Module):
    """Element-wise dropout, ``F.dropout`` itself, with a settable rate and the share its mask
    dropped (``last_dropped_fraction``, a 0-d tensor). The mask is replayed from the random state
    F.dropout drew from (its draws depend on the shape, not the values), not read from zeros after
    a ReLU, which would count the ReLU's zeros too."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.last_dropped_fraction: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.drop_prob == 0.0:
            self.last_dropped_fraction = torch.zeros(())
            return x
        before = torch.get_rng_state()
        y = F.dropout(x, self.drop_prob, training=True)
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        with torch.no_grad():
            mask = F.dropout(torch.ones_like(x), self.drop_prob, training=True) == 0
            self.last_dropped_fraction = mask.float().mean()
        torch.set_rng_state(after)
        return y

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob} (element-wise F.dropout)"


def set_rate(model: nn.Module, rate: float) -> None:
    """The schedule's rate: ``ck.set_drop_prob`` for CamDrop layers, the attribute for the others."""
    ck.set_drop_prob(model, rate)
    if not isinstance(model.reg, (CamDropNd, nn.Identity)):  # DropBlock, DropBlock1d, Dropout
        model.reg.drop_prob = rate


def dropped(model: nn.Module) -> float:
    """The share of the map the regulariser dropped in its last training forward (0 without one)."""
    share = getattr(model.reg, "last_dropped_fraction", None)
    return 0.0 if share is None else float(share)


def saturated(model: nn.Module) -> Optional[float]:
    """CamDrop only: the share of the last forward's samples whose seed rate reached 1."""
    rate = getattr(model.reg, "last_rate", None)
    return None if rate is None else float((rate >= 1.0).float().mean())


# -- model -----------------------------------------------------------------------------------------
@dataclass
class Config:
    label: str
    short: str
    build: Optional[Callable[[nn.Linear, argparse.Namespace], nn.Module]]


def regularizer_configs(camdrop: str, layer: type, dropblock: str, block: type) -> Dict[str, Config]:
    """The compared configurations, for CamDrop ``layer`` (named ``camdrop`` in the table) and the
    DropBlock layer ``block`` (described as ``dropblock``): none, CamDrop bound to the classifier,
    CamDrop self-guided, DropBlock and element-wise dropout, all at ``--drop-prob``."""
    return {
        "none": Config("none", "none", None),
        "camdrop": Config(f"{camdrop}, classifier guidance (defaults: n' = C/8, eligible rate)", "CamDrop (classifier)",
                          lambda fc, a: layer(a.drop_prob, a.block_size, classifier=fc)),
        "camdrop_self": Config(f"{camdrop}, self guidance (guidance='self')", "CamDrop (self)",
                               lambda fc, a: layer(a.drop_prob, a.block_size, guidance="self")),
        "dropblock": Config(f"DropBlock ({dropblock})", "DropBlock", lambda fc, a: block(a.drop_prob, a.block_size)),
        "dropout": Config("dropout (element-wise F.dropout)", "dropout", lambda fc, a: Dropout(a.drop_prob)),
    }


CONFIGS = regularizer_configs("CamDrop", ck.CamDrop2d, "torchvision drop_block2d", DropBlock)
CONTRASTS = (("camdrop", "dropblock"), ("camdrop", "camdrop_self"), ("camdrop", "dropout"),
             ("camdrop_self", "dropblock"), ("camdrop_self", "dropout"))


def build_model(name: str, seed: int, args: argparse.Namespace) -> SmallCNN:
    """The configuration's network with the seed's initial weights."""
    torch.manual_seed(seed)
    build = CONFIGS[name].build
    return SmallCNN(10, None if build is None else (lambda fc: build(fc, args)))


def _guided(model: SmallCNN, labels: torch.Tensor):
    """``ck.targets`` where a layer is guided by the classifier; nothing otherwise."""
    if any(layer.guidance == "classifier" for layer in ck.camdrop_layers(model)):
        return ck.targets(model, labels)
    return contextlib.nullcontext()


# -- training ---------------------------------------------------------------------------------------
@torch.no_grad()
def share_at_final_rate(model: SmallCNN, x: torch.Tensor, y: torch.Tensor, rate: float,
                        seed: int) -> Tuple[float, Optional[float]]:
    """(share dropped, share of samples saturated) by the trained model's regulariser at the final
    rate, on the eval-mode features of the clean test digits x (batch norm's statistics untouched)."""
    if isinstance(model.reg, nn.Identity):
        return 0.0, None
    model.eval()
    features = model.body(x)
    model.reg.train()
    set_rate(model, rate)
    with torch.random.fork_rng(devices=[]), _guided(model, y):
        torch.manual_seed(seed)
        model.reg(features)
    model.eval()
    return dropped(model), saturated(model)


def train_and_evaluate(name: str, seed: int, data: Split, args: argparse.Namespace,
                       task: Optional["Task"] = None) -> dict:
    """Train one configuration on one seed; its accuracies and shares dropped."""
    task = DIGITS if task is None else task
    model = task.build(name, seed, args)
    final_rate = 0.0 if task.configs[name].build is None else args.drop_prob
    train_x = task.inputs(data.train_x, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(train_x) // args.batch_size
    total = max(1, args.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2 * args.lr, total_steps=total)
    order = torch.Generator().manual_seed(seed)  # the batch order: the same for every configuration
    wall, cpu = time.perf_counter(), time.process_time()
    shares: List[float] = []
    step = 0
    for _ in range(args.epochs):
        model.train()
        permutation = torch.randperm(len(train_x), generator=order)
        for k in range(steps_per_epoch):
            index = permutation[k * args.batch_size:(k + 1) * args.batch_size]
            x, y = train_x[index], data.train_y[index]
            set_rate(model, ck.linear_ramp(step, total, final_rate))
            with _guided(model, y):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            shares.append(dropped(model))
            step += 1
    train_seconds = time.perf_counter() - wall
    result = {"seed": seed, "final_rate": final_rate, "train_loss_last": loss.item()}
    for occlusion in OCCLUSIONS:
        result[occlusion] = accuracy(model, task.inputs(data.test[occlusion], args), data.test_y)
    probe = task.inputs(data.test["clean"][:args.probe], args)
    result["dropped_full"], result["saturated_full"] = share_at_final_rate(
        model, probe, data.test_y[:args.probe], final_rate, seed)
    result["dropped_train"] = sum(shares) / len(shares) if shares else 0.0
    result["train_accuracy"] = accuracy(model, train_x, data.train_y)
    result["train_seconds"] = train_seconds
    result["cpu_seconds"] = time.process_time() - cpu
    return result


# -- statistics -------------------------------------------------------------------------------------
def summarise(runs: Dict[str, List[dict]], configs: Optional[Dict[str, Config]] = None) -> Dict[str, dict]:
    configs = CONFIGS if configs is None else configs
    baseline = runs.get("none")
    summary = {}
    for name, results in runs.items():
        entry = {"label": configs[name].label, "short": configs[name].short, "final_rate": results[0]["final_rate"]}
        for key in (*OCCLUSIONS, "train_accuracy", "dropped_train", "dropped_full", "train_seconds"):
            mean, sd = mean_sd([r[key] for r in results])
            entry[key] = {"mean": mean, "sd": sd}
        sat = [r["saturated_full"] for r in results if r["saturated_full"] is not None]
        entry["saturated_full"] = {"mean": mean_sd(sat)[0], "sd": mean_sd(sat)[1]} if sat else None
        if baseline is not None and name != "none":
            for key in OCCLUSIONS:
                entry[f"{key}_vs_none"] = paired([r[key] for r in results], [r[key] for r in baseline])
        summary[name] = entry
    return summary


def contrasts(runs: Dict[str, List[dict]], declared: Sequence[Tuple[str, str]] = CONTRASTS) -> List[dict]:
    return [{"a": a, "b": b, **{key: paired([r[key] for r in runs[a]], [r[key] for r in runs[b]])
                                for key in OCCLUSIONS}}
            for a, b in declared if a in runs and b in runs]


def holm(ps: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjustment of a family of p-values (None stays None and counts as 1)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: 1.0 if ps[i] is None else ps[i])
    adjusted: List[Optional[float]] = [None] * m
    running = 0.0
    for rank, i in enumerate(order):
        if ps[i] is None:
            continue
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def t_quantile(level: float, df: int) -> float:
    """The two-sided ``level`` point of Student's t (t with p = 1 - level), by bisection on t_test_p."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_test_p(mid, df) > 1 - level else (lo, mid)
    return (lo + hi) / 2


def primary_family(runs: Dict[str, List[dict]], declared: Sequence[Tuple[str, str]],
                   key: str = "discriminative") -> List[dict]:
    """The declared contrasts on ``key``: paired difference, its 95% interval, raw and Holm p."""
    rows = [{"a": a, "b": b, **paired([r[key] for r in runs[a]], [r[key] for r in runs[b]])} for a, b in declared]
    for row, adjusted in zip(rows, holm([row["p"] for row in rows])):
        half = t_quantile(0.95, row["n"] - 1) * row["sd"] / math.sqrt(row["n"]) if row["n"] > 1 else math.nan
        row.update(holm=adjusted, low=row["mean"] - half, high=row["mean"] + half, key=key)
    return rows


# -- report ------------------------------------------------------------------------------------------
def _diff(diff: Optional[dict]) -> str:
    if diff is None:
        return "—"
    p = "n/a" if diff["p"] is None else f"{diff['p']:.3f}"
    return f"{100 * diff['mean']:+.1f} (p {p})"


def markdown(summary: Dict[str, dict], settings: dict, runtime: dict, pairs: Sequence[dict],
             linear: Dict[str, dict], changed: Dict[str, float], primary: Sequence[dict] = ()) -> str:
    lines = [
        f"### CamDrop on scikit-learn digits, {seeds_shown(settings)}",
        "",
        f"{settings['train_size']} training digits (stratified), {settings['test_count']} test digits, upsampled "
        f"8x8 -> {settings['size']}x{settings['size']}; {settings['epochs']} epochs, no augmentation; regulariser on "
        f"the {settings['size'] // 4}x{settings['size'] // 4}x64 map, block {settings['block_size']}, final rate "
        f"{settings['drop_prob']} reached by a linear ramp. Accuracy in %, mean ± sd over seeds; Δ = paired "
        "difference to \"none\" in points, two-sided paired t-test. Occluded: a "
        f"{settings['patch']}x{settings['patch']} patch of the 8x8 digit blanked, at a random place or where a "
        "logistic regression on the pixels (fitted to the training digits) finds the most evidence for the true "
        "class. Dropped = share of the map's elements dropped at the final rate by the trained model (as trained "
        "under the ramp in brackets); saturated = share of samples whose CamDrop seed rate hit 1.",
    ]
    lines += result_tables(summary, pairs, OCCLUSION_LABELS)
    lines += primary_lines(summary, primary, OCCLUSION_LABELS)
    lines += [
        "",
        tests_line(summary, pairs),
        "",
        "The logistic regression that picks the discriminative patch (context, not a compared model): "
        + ", ".join(f"{OCCLUSION_LABELS[k]} {percent(linear[k])}%" for k in OCCLUSIONS) + ". The blanked patch held "
        f"ink (changed the digit) in {100 * changed['random']:.0f}% of the test digits for the random patch, "
        f"{100 * changed['discriminative']:.0f}% for the discriminative one.",
        "",
        runtime_line(settings, runtime),
        "",
    ]
    return "\n".join(lines)


def seeds_shown(settings: dict) -> str:
    """'20 paired seeds', with '(seeds 5-24)' when they do not start at 0."""
    seeds = settings["seeds"]
    shown = "" if seeds == list(range(len(seeds))) else f" (seeds {seeds[0]}-{seeds[-1]})"
    return f"{len(seeds)} paired seed{'s' * (len(seeds) != 1)}{shown}"


def result_tables(summary: Dict[str, dict], pairs: Sequence[dict], labels: Dict[str, str]) -> List[str]:
    """The configurations' table (share dropped, accuracies, differences to none) and the paired
    contrasts' table; ``labels`` names the occlusions ("random patch", "random segment")."""
    acc = [f"{labels[k]} acc" for k in OCCLUSIONS]
    lines = ["", f"| configuration | dropped % (training) | saturated | {acc[0]} | Δ clean (p) | {acc[1]} | "
             f"Δ random (p) | {acc[2]} | Δ discr. (p) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in summary.items():
        share = f"{100 * entry['dropped_full']['mean']:.2f} ({100 * entry['dropped_train']['mean']:.2f})"
        sat = "—" if entry["saturated_full"] is None else f"{100 * entry['saturated_full']['mean']:.0f}%"
        cells = [f"{percent(entry[k])} | {_diff(entry.get(f'{k}_vs_none'))}" for k in OCCLUSIONS]
        lines.append(f"| {entry['label']} | {share} | {sat} | " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", "| paired contrast A − B | " + " | ".join(f"Δ {labels[k]} (p)" for k in OCCLUSIONS) + " |",
                  "| --- | --- | --- | --- |"]
        for pair in pairs:
            lines.append(f"| {summary[pair['a']]['short']} − {summary[pair['b']]['short']} | "
                         + " | ".join(_diff(pair[k]) for k in OCCLUSIONS) + " |")
    return lines


def tests_line(summary: Dict[str, dict], pairs: Sequence[dict]) -> str:
    n = sum(1 for e in summary.values() for k in OCCLUSIONS if f"{k}_vs_none" in e) + len(pairs) * len(OCCLUSIONS)
    return (f"{n} paired tests in these tables: at p < 0.05 about {0.05 * n:.1f} would come out \"significant\" by "
            "chance alone if nothing differed.")


def primary_lines(summary: Dict[str, dict], primary: Sequence[dict], labels: Dict[str, str]) -> List[str]:
    """The declared family's table (nothing when none was declared)."""
    if not primary:
        return []
    lines = ["", f"Declared primary contrasts ({labels[primary[0]['key']]}; named before the run, "
             f"Holm's adjustment over these {len(primary)}):", "",
             "| primary contrast A − B | Δ (points) | 95% interval | p | Holm p |", "| --- | --- | --- | --- | --- |"]
    for row in primary:
        short = {name: summary[name]["short"] for name in (row["a"], row["b"])}
        p = "n/a" if row["p"] is None else f"{row['p']:.4f}"
        adj = "n/a" if row["holm"] is None else f"{row['holm']:.4f}"
        lines.append(f"| {short[row['a']]} − {short[row['b']]} | {100 * row['mean']:+.2f} | "
                     f"[{100 * row['low']:+.2f}, {100 * row['high']:+.2f}] | {p} | {adj} |")
    return lines


def runtime_line(settings: dict, runtime: dict) -> str:
    return (f"Runtime: {runtime['wall_seconds']:.0f} s wall, {runtime['cpu_seconds']:.0f} s CPU in the runs "
            f"({runtime['process_cpu_seconds']:.0f} s CPU for all processes) with {settings['workers']} "
            f"worker{'s' * (settings['workers'] != 1)} of {settings['threads']} thread"
            f"{'s' * (settings['threads'] != 1)}, torch {torch.__version__}. Command: `{settings['command']}`")


# -- the study: what a real-data run supplies to the machinery above ------------------------------------
@dataclass(frozen=True)
class Task:
    """One real-data study for the shared training, statistics and report code of this module:
    its data, network, regularisers and table (``DIGITS`` below; ``mnist_1d.py``'s ``MNIST1D``).
    Its networks have ``body``, ``reg`` and ``fc``; its splits are :class:`Split`. Pickled by name
    (the configurations hold lambdas), so spawned workers import it from ``home``."""

    home: Tuple[str, str]  # (module, attribute) naming this object
    script: str            # the command line shown in the report: "python examples/digits.py"
    names: Tuple[str, str]  # the report's files (markdown, json)
    configs: Dict[str, Config]
    contrasts: Tuple[Tuple[str, str], ...]
    make: Callable[[int, argparse.Namespace], Split]             # seed -> its split and test sets
    build: Callable[[str, int, argparse.Namespace], nn.Module]   # (configuration, seed) -> network
    inputs: Callable[[torch.Tensor, argparse.Namespace], torch.Tensor]  # data -> the network's input
    describe: Callable[[int, Split], dict]                       # what the report keeps of a seed's data
    markdown: Callable[..., str]  # (summary, settings, runtime, pairs, per_seed, primary) -> the table

    def __reduce__(self):
        return _task_named, self.home


def _task_named(module: str, attribute: str) -> Task:
    return getattr(importlib.import_module(module), attribute)


def _digits_split(seed: int, args: argparse.Namespace) -> Split:
    return _seed_data(seed, args.train_size, args.test_size, args.patch)


def _digits_inputs(x: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    return upsample(x, args.size)


def _digits_markdown(summary: Dict[str, dict], settings: dict, runtime: dict, pairs: Sequence[dict],
                     per_seed: List[dict], primary: Sequence[dict]) -> str:
    linear = {k: dict(zip(("mean", "sd"), mean_sd([s["linear"][k] for s in per_seed]))) for k in OCCLUSIONS}
    changed = {k: mean_sd([s["changed"][k] for s in per_seed])[0] for k in OCCLUSIONS if k != "clean"}
    return markdown(summary, settings, runtime, pairs, linear, changed, primary)


@functools.lru_cache(maxsize=None)  # (a few hundred kB a seed)
def _seed_data(seed: int, n_train: int, n_test: Optional[int], patch: int) -> Split:
    return make_digits(seed, n_train, n_test, patch)


DIGITS = Task(home=(__name__, "DIGITS"), script="python examples/digits.py", names=NAMES, configs=CONFIGS,
              contrasts=CONTRASTS, make=_digits_split, build=build_model, inputs=_digits_inputs, describe=describe,
              markdown=_digits_markdown)


# -- command line ---------------------------------------------------------------------------------------
def common_arguments(parser: argparse.ArgumentParser, task: Task, default_out: Path, noun: str) -> None:
    """The options every study takes (seeds, data sizes, training, regularisers, workers, output);
    ``noun`` names its samples ("digits", "signals")."""
    files = " and ".join(task.names)
    parser.add_argument("--seeds", type=int, default=5, help="how many paired seeds (first-seed .. first-seed + N - 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (a confirmatory run takes fresh ones)")
    parser.add_argument("--primary", nargs="+", default=[], metavar="A:B",
                        help="declared primary contrasts on the discriminative occlusion (patch, segment), e.g. "
                             "camdrop:none (Holm-adjusted)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--drop-prob", type=float, default=0.1, help="every regulariser's final rate")
    parser.add_argument("--block-size", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(task.configs), choices=list(task.configs))
    parser.add_argument("--workers", type=int, default=None,
                        help="processes running (seed, configuration) jobs side by side (default: 2, or the CPU "
                             "count if lower; --quick: 1, in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--out", type=Path, default=default_out, help=f"folder for {files} (created if absent)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace {files} already in --out")
    parser.add_argument("--rerender", action="store_true",
                        help=f"no training: rebuild the table from the runs saved in --out/{task.names[1]}")
    parser.add_argument("--train-size", type=int, default=1000, help=f"training {noun} per seed (stratified)")
    parser.add_argument("--test-size", type=int, default=None, help=f"test {noun} (default: all the test set)")
    parser.add_argument("--probe", type=int, default=500, help=f"test {noun} to measure the share dropped on")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: 2 seeds, 2 epochs, 200 training and 200 test {noun}, in this process")


def check_common(parser: argparse.ArgumentParser, args: argparse.Namespace, task: Task,
                 argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Validate the common options; ``args.primary`` becomes pairs, ``args.command`` the command line."""
    if args.quick:
        args.seeds, args.epochs, args.train_size, args.test_size, args.probe = 2, 2, 200, 200, 200
    if args.workers is None:
        args.workers = 1 if args.quick else min(2, os.cpu_count() or 1)
    if "none" not in args.configs:
        args.configs.insert(0, "none")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0; got {args.first_seed}")
    primary = []
    for item in args.primary:
        a, sep, b = item.partition(":")
        if not sep or a not in args.configs or b not in args.configs or a == b:
            parser.error(f"--primary takes A:B with two different configurations among {args.configs}; got {item!r}")
        primary.append((a, b))
    args.primary = primary
    shown = list(sys.argv[1:] if argv is None else argv)
    args.command = " ".join([task.script, *shown])
    return args


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common_arguments(parser, DIGITS, DEFAULT_OUT, "digits")
    parser.add_argument("--size", type=int, default=32, help="upsampled side (a multiple of 4); the map is size/4")
    parser.add_argument("--patch", type=int, default=3, help="side of the blanked patch, in original 8x8 pixels")
    args = parser.parse_args(argv)
    if args.size % 4 or args.size < 4 * args.block_size:
        parser.error(f"--size must be a multiple of 4 and give a map of at least --block-size; got {args.size}")
    return check_common(parser, args, DIGITS, argv)


def _shown(value):
    if isinstance(value, Path):
        value = value.resolve()
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    return value


def run_job(job: Tuple[int, str], args: argparse.Namespace, task: Task) -> Tuple[int, str, dict]:
    seed, name = job
    torch.set_num_threads(args.threads)
    return seed, name, train_and_evaluate(name, seed, task.make(seed, args), args, task)


def _jobs(args: argparse.Namespace, task: Task):
    """Every (seed, configuration), in ``args.workers`` spawned workers when > 1. Every run seeds
    itself, so neither the worker nor the order changes its numbers."""
    jobs = [(seed, name) for seed in _seeds(args) for name in args.configs]
    if args.workers <= 1:
        yield from (run_job(job, args, task) for job in jobs)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        yield from pool.imap_unordered(functools.partial(run_job, args=args, task=task), jobs)


def _seeds(args: argparse.Namespace) -> List[int]:
    return list(range(args.first_seed, args.first_seed + args.seeds))


def _outputs(out: Path, task: Task) -> Tuple[Path, Path]:
    return out / task.names[0], out / task.names[1]


def _refuse_overwrite(args: argparse.Namespace, task: Task) -> None:
    existing = [str(p) for p in _outputs(args.out, task) if p.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"refusing to overwrite {', '.join(existing)}: pass --overwrite, or a fresh --out folder")


def run(args: argparse.Namespace, task: Task = DIGITS) -> dict:
    _refuse_overwrite(args, task)
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    runs: Dict[str, Dict[int, dict]] = {name: {} for name in args.configs}
    for seed, name, result in _jobs(args, task):
        runs[name][seed] = result
        print(f"seed {seed} {name:12s} clean {100 * result['clean']:5.1f}  random {100 * result['random']:5.1f}  "
              f"discr. {100 * result['discriminative']:5.1f}  dropped {100 * result['dropped_full']:5.2f}% "
              f"({100 * result['dropped_train']:5.2f}%)  {result['train_seconds']:5.1f} s", flush=True)
    ordered = {name: [by_seed[s] for s in sorted(by_seed)] for name, by_seed in runs.items()}
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    runtime = {"wall_seconds": time.perf_counter() - wall,
               "cpu_seconds": sum(r["cpu_seconds"] for results in ordered.values() for r in results),
               "process_cpu_seconds": me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime}
    seeds = _seeds(args)
    data = [task.make(s, args) for s in seeds]
    settings = {key: _shown(value) for key, value in vars(args).items()}
    settings["seeds"] = seeds
    settings["test_count"] = len(data[0].test_y)
    settings["package"] = _shown(Path(ck.__file__).parent)  # which camdrop_kernels ran (a checkout or an install)
    per_seed = [task.describe(s, d) for s, d in zip(seeds, data)]
    report = analyse(settings, runtime, ordered, per_seed, task)
    write(report, args.out, task)
    return report


def analyse(settings: dict, runtime: dict, runs: Dict[str, List[dict]], per_seed: List[dict],
            task: Task = DIGITS) -> dict:
    summary = summarise(runs, task.configs)
    pairs = contrasts(runs, task.contrasts)
    primary = primary_family(runs, [tuple(pair) for pair in settings.get("primary", ())])
    return {"settings": settings, "runtime": runtime, "summary": summary, "contrasts": pairs, "primary": primary,
            "runs": runs, "data": per_seed,
            "markdown": task.markdown(summary, settings, runtime, pairs, per_seed, primary)}


def write(report: dict, out: Path, task: Task = DIGITS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    md, js = _outputs(out, task)
    md.write_text(report["markdown"])
    js.write_text(json.dumps(report, indent=1))
    print(report["markdown"])


def rerender(out: Path, task: Task = DIGITS) -> dict:
    """Rebuild the summary and the table from a saved report's raw runs (no training)."""
    saved = json.loads(_outputs(out, task)[1].read_text())
    report = analyse(saved["settings"], saved["runtime"], saved["runs"], saved["data"], task)
    write(report, out, task)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.rerender:
        rerender(args.out)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
