"""CamDrop1d on real 1-D data: MNIST-1D, clean and with a segment blanked.

The data: MNIST-1D (Greydanus & Kobak, 2020), as ``mnist1d.data.make_dataset(get_dataset_args())``
generates it (no download; its own seed 42): ten 1-D digit templates, shifted, scaled, sheared
and noised into 4,000 training and 1,000 test signals of 40 samples. Per seed a stratified
random 1,000 of the training signals train (the whole 4,000 leave a CNN at 99%, nothing to
regularise); the 1,000 test signals are the same for every seed. No augmentation.

The network: conv1d(1->32, k5)-BN-ReLU, conv1d(32->64, k5)-BN-ReLU, max-pool 2, conv1d(64->64,
k3)-BN-ReLU give a (64, 20) map; the regulariser sits on it; then global average pooling and one
linear layer, so the CAM at the regularised map is exact. One map position is two samples.

Configurations, all at the final rate 0.1 (block 3 where there are blocks) by the authors' linear
ramp: none; ``CamDrop1d`` bound to the classifier (defaults); ``CamDrop1d`` with
``guidance="self"``; DropBlock (``regularizers.DropBlock1d``); element-wise dropout.

Evaluation on the test signals: clean; with a random segment of ``--segment`` samples (default 6,
one block of 3 map positions) set to 0 (the data's mean); and with the most class-discriminative
segment set to 0, chosen by a logistic regression on the 40 samples fitted to the seed's training
signals (a model none of the compared networks is): evidence for the true class at sample i is
x_i (w_yi - mean_k w_ki), and the segment with the largest summed evidence is blanked.

Training, statistics and the report are ``digits.py``'s (paired seeds, paired t-tests, a declared
primary family with Holm's adjustment); this file supplies the data, the network and the table.

    python examples/mnist_1d.py --quick --out /tmp/q   # a smoke run (seconds)
    python examples/mnist_1d.py --seeds 20 --configs none camdrop camdrop_self dropblock \\
        --primary camdrop:none camdrop_self:none camdrop:dropblock --out examples/results/mnist1d
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import camdrop_kernels as ck  # noqa: E402
import digits  # noqa: E402  (the shared training, statistics and report)
from digits import OCCLUSIONS, Split, Task  # noqa: E402
from evidence import mean_sd, percent  # noqa: E402
from regularizers import DropBlock1d  # noqa: E402

DEFAULT_OUT = digits.ROOT / "runs" / "mnist1d"
LABELS = {"clean": "clean", "random": "random segment", "discriminative": "discriminative segment"}


# -- data ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _load() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mnist1d.data import get_dataset_args, make_dataset  # generated, not downloaded

    data = make_dataset(get_dataset_args())
    return (torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.int64),
            torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"], dtype=torch.int64))


def blank(signals: torch.Tensor, starts: torch.Tensor, segment: int) -> torch.Tensor:
    """A copy of signals (m, L) with samples starts[i] .. starts[i] + segment - 1 set to 0."""
    out = signals.clone()
    out[torch.arange(len(signals))[:, None], starts[:, None] + torch.arange(segment)] = 0.0
    return out


def discriminative_starts(signals: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                          segment: int) -> torch.Tensor:
    """Per signal, the start of the segment with the largest summed evidence for the true class
    under a linear model with weight (K, L): x_i (w_yi - mean_k w_ki). Ties: the first."""
    evidence = signals * (weight - weight.mean(0, keepdim=True))[labels]
    return F.avg_pool1d(evidence[:, None], segment, stride=1)[:, 0].argmax(1)


def make_split(seed: int, n_train: int, n_test: Optional[int], segment: int) -> Split:
    """The seed's training subset and its three test sets (the same for every configuration)."""
    from sklearn.linear_model import LogisticRegression

    x, y, test_x, test_y = _load()
    generator = torch.Generator().manual_seed(20_000 + seed)
    train, _ = digits.stratified_split(y, n_train, generator)
    if n_test is not None:
        test_x, test_y = test_x[:n_test], test_y[:n_test]
    train_x, train_y = x[train], y[train]
    fit = LogisticRegression(max_iter=5000).fit(train_x.double().numpy(), train_y.numpy())
    weight = torch.tensor(fit.coef_, dtype=torch.float32)
    starts = {
        "random": torch.randint(0, test_x.shape[1] - segment + 1, (len(test_x),), generator=generator),
        "discriminative": discriminative_starts(test_x, test_y, weight, segment),
    }
    sets = {"clean": test_x, **{name: blank(test_x, s, segment) for name, s in starts.items()}}
    linear = {name: float((torch.tensor(fit.predict(v.double().numpy())) == test_y).float().mean())
              for name, v in sets.items()}
    return Split(train_x, train_y, sets, test_y, {k: v[:, None] for k, v in starts.items()}, linear, segment)


@functools.lru_cache(maxsize=None)
def _seed_data(seed: int, n_train: int, n_test: Optional[int], segment: int) -> Split:
    return make_split(seed, n_train, n_test, segment)


def _split(seed: int, args: argparse.Namespace) -> Split:
    return _seed_data(seed, args.train_size, args.test_size, args.segment)


def describe(seed: int, data: Split) -> dict:
    """What the report keeps of a seed's data: the logistic regression's accuracies, where the
    discriminative segment started (counts per start), and SHA-256 digests (first 16 hex digits)
    of the training labels and the three test sets, to check that a rerun used the same data."""
    starts = data.patches["discriminative"][:, 0]
    tensors = {"train_y": data.train_y, **{f"test_{k}": v for k, v in data.test.items()}}
    return {"seed": seed, "linear": data.linear,
            "discriminative_start_counts": torch.bincount(
                starts, minlength=data.test["clean"].shape[1] - data.patch + 1).tolist(),
            "sha256": {k: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]
                       for k, t in tensors.items()}}


# -- model -----------------------------------------------------------------------------------------
class SmallCNN1d(nn.Module):
    """conv-BN-ReLU (32, k5) -> (64, k5) -> pool -> (64, k3) -> regulariser -> global average pool ->
    linear. ``regularizer`` builds the regulariser from the classifier (None: none); building it
    draws no random numbers, so one seed gives every configuration the same initial weights."""

    def __init__(self, classes: int, regularizer=None, widths: Sequence[int] = (32, 64, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.body = nn.Sequential(
            nn.Conv1d(1, a, 5, padding=2, bias=False), nn.BatchNorm1d(a), nn.ReLU(),
            nn.Conv1d(a, b, 5, padding=2, bias=False), nn.BatchNorm1d(b), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(b, c, 3, padding=1, bias=False), nn.BatchNorm1d(c), nn.ReLU(),
        )
        self.fc = nn.Linear(c, classes)
        self.reg = regularizer(self.fc) if regularizer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.reg(self.body(x)).mean(2))


CONFIGS = digits.regularizer_configs("CamDrop1d", ck.CamDrop1d, "1-D, regularizers.DropBlock1d", DropBlock1d)


def build_model(name: str, seed: int, args: argparse.Namespace) -> SmallCNN1d:
    """The configuration's network with the seed's initial weights."""
    torch.manual_seed(seed)
    build = CONFIGS[name].build
    return SmallCNN1d(10, None if build is None else (lambda fc: build(fc, args)))


def inputs(x: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """(m, 40) signals -> (m, 1, 40)."""
    return x[:, None]


# -- report ------------------------------------------------------------------------------------------
def markdown(summary: Dict[str, dict], settings: dict, runtime: dict, pairs: Sequence[dict],
             per_seed: List[dict], primary: Sequence[dict]) -> str:
    lines = [
        f"### CamDrop1d on MNIST-1D, {digits.seeds_shown(settings)}",
        "",
        f"{settings['train_size']} training signals (stratified, of MNIST-1D's 4000), {settings['test_count']} test "
        f"signals of 40 samples; {settings['epochs']} epochs, no augmentation; regulariser on the (64, 20) map, "
        f"block {settings['block_size']}, final rate {settings['drop_prob']} reached by a linear ramp. Accuracy in "
        "%, mean ± sd over seeds; Δ = paired difference to \"none\" in points, two-sided paired t-test. Occluded: "
        f"a segment of {settings['segment']} samples set to 0, at a random place or where a logistic regression on "
        "the samples (fitted to the training signals) finds the most evidence for the true class. Dropped = share "
        "of the map's elements dropped at the final rate by the trained model (as trained under the ramp in "
        "brackets); saturated = share of samples whose CamDrop seed rate hit 1.",
    ]
    lines += digits.result_tables(summary, pairs, LABELS)
    lines += digits.primary_lines(summary, primary, LABELS)
    linear = {k: dict(zip(("mean", "sd"), mean_sd([s["linear"][k] for s in per_seed]))) for k in OCCLUSIONS}
    lines += [
        "",
        digits.tests_line(summary, pairs),
        "",
        "The logistic regression that picks the discriminative segment (context, not a compared model): "
        + ", ".join(f"{LABELS[k]} {percent(linear[k])}%" for k in OCCLUSIONS) + ".",
        "",
        digits.runtime_line(settings, runtime),
        "",
    ]
    return "\n".join(lines)


MNIST1D = Task(home=(__name__, "MNIST1D"), script="python examples/mnist_1d.py", names=("mnist1d.md", "mnist1d.json"),
               configs=CONFIGS, contrasts=digits.CONTRASTS, make=_split, build=build_model, inputs=inputs,
               describe=describe, markdown=markdown)


# -- command line ---------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    digits.common_arguments(parser, MNIST1D, DEFAULT_OUT, "signals")
    parser.add_argument("--segment", type=int, default=6, help="length of the blanked segment, in samples")
    args = parser.parse_args(argv)
    if not 1 <= args.segment <= 40:
        parser.error(f"--segment must be between 1 and 40 samples; got {args.segment}")
    return digits.check_common(parser, args, MNIST1D, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.rerender:
        digits.rerender(args.out, MNIST1D)
    else:
        digits.run(args, MNIST1D)
    return 0


if __name__ == "__main__":
    sys.exit(main())
