"""CIFAR-10 ResNet-56 with and without CamDrop (or DropBlock, or the average-guided control):
the recipe for the paper's CIFAR table, on a GPU, from a local copy of CIFAR-10.

Model: the CIFAR ResNet-56 of He et al. (2016): a 3x3 conv to 16 channels, then 3 groups of 9
basic blocks with 16, 32 and 64 channels (32x32, 16x16, 8x8 maps; identity shortcuts, zero-padded
where the width doubles), global average pooling and one linear layer. The regulariser goes
into every block of the last two groups (the paper's placement), after the block's first BN
(timm's ``drop_block`` slot, the one ``camdrop_kernels.convert_resnet`` uses), with the authors'
per-group rate (group 3 gets the rate, group 2 a quarter of it) and the authors' "decay"
schedule (the rate ramps linearly from 0 to its final value over the whole run).
Training: SGD with momentum 0.9, batch 128, weight decay 2e-4, lr 0.1 divided by 10 at epochs
150, 250 and 350 of 400 (the authors' milestones, ``ResNet/cifar10-resnet.py``); standard
augmentation (4-pixel zero padding, random 32x32 crop, horizontal flip), done on the device.

    python examples/cifar10.py --data ~/data --regularizer camdrop   # ~/data/cifar-10-batches-py
    python examples/cifar10.py --data ~/data --regularizer none
    python examples/cifar10.py --data ~/data --regularizer average    # the paper's control
    python examples/cifar10.py --data ~/data --regularizer dropblock

The data is read with ``torchvision.datasets.CIFAR10(root, download=False)`` (nothing is
downloaded). ``--make-standin DIR`` writes a small random data set in the same on-disk format
(``cifar-10-batches-py`` with pickled batches) for trying the pipeline; read it back with
``--skip-checksums``, since its files are not the real ones.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import camdrop_kernels as ck  # noqa: E402
from regularizers import AverageGuided, DropBlock, dropped_share, set_rate  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
REGULARIZERS = ("none", "camdrop", "average", "dropblock")
SHARE_EVERY = 20  # steps between readings of the share dropped
BLOCK_SIZE = {2: 5, 3: 3}  # per group: the 16x16 and the 8x8 maps (timm's 5 and 3 for its last two stages)


# -- data ----------------------------------------------------------------------------------------
def write_standin(root: os.PathLike, n_train: int = 100, n_test: int = 50, seed: int = 0) -> Path:
    """Write a random stand-in for CIFAR-10 in its python format under ``root/cifar-10-batches-py``
    (five training batches, a test batch, batches.meta); returns that folder. For tests and dry runs."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(name: str, n: int) -> None:
        entry = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "filenames": [f"standin_{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)

    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for i, n in enumerate(sizes, 1):
        batch(f"data_batch_{i}", n)
    batch("test_batch", n_test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": max(sizes), "num_vis": 3072}, f)
    return folder


def load_cifar10(root: str, train: bool, skip_checksums: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from ``root/cifar-10-batches-py``, never downloading."""
    from torchvision.datasets import CIFAR10

    if skip_checksums:
        class UncheckedCIFAR10(CIFAR10):
            """CIFAR10 that reads files whose checksums differ from the real ones (a stand-in)."""

            def _check_integrity(self) -> bool:
                return all((Path(self.root) / self.base_folder / name).is_file()
                           for name, _ in self.train_list + self.test_list)

            def _load_meta(self) -> None:
                with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                    self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        dataset = UncheckedCIFAR10(root, train=train, download=False)
    else:
        dataset = CIFAR10(root, train=train, download=False)
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(dataset.targets, dtype=torch.int64)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> float, per-channel standardised."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch, on its device: zero-pad by 4, crop a random 32x32
    window per image, flip half of them horizontally."""
    n = images.shape[0]
    padded = F.pad(images, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (n, 2), generator=generator, device=generator.device).to(images.device)
    grid = torch.arange(32, device=images.device)
    rows = (offsets[:, 0:1] + grid)[:, :, None]
    cols = (offsets[:, 1:2] + grid)[:, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


# -- model ---------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv-BN-[regulariser]-ReLU-conv-BN, plus the shortcut, then ReLU (He et al.'s CIFAR block)."""

    def __init__(self, cin: int, cout: int, stride: int, regularizer: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.drop = regularizer if regularizer is not None else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin  # option A: subsample and zero-pad the channels where the width doubles
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.drop(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            half = self.pad // 2
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, half, self.pad - half))
        return F.relu(out + shortcut)


Factory = Callable[[int, nn.Linear], Optional[nn.Module]]  # (group, classifier) -> regulariser or None


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images; ``regularizer(group, fc)`` gives each block of ``group``
    (1, 2, 3) its regulariser (None: none). The classifier is built first so CamDrop can bind to it."""

    def __init__(self, depth: int = 56, classes: int = 10, regularizer: Optional[Factory] = None) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2; got {depth}")
        n = (depth - 2) // 6
        self.fc = nn.Linear(64, classes)
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for group, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), 1):
            for i in range(n):
                reg = regularizer(group, self.fc) if regularizer is not None else None
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, reg))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def regularizer_factory(kind: str, drop_prob: float, groups: Sequence[int], top_channels: Optional[float] = None,
                        gamma_mode: str = "eligible") -> Optional[Factory]:
    """The per-group regulariser of ``kind``: group g of 3 gets ``drop_prob / 4**(3 - g)`` (the
    authors' rule; ``set_rate`` keeps the ratio), block size 5 on the 16x16 map, 3 on the 8x8 one.
    ``top_channels`` (CamDrop's n') and ``gamma_mode`` apply to CamDrop and the average-guided control."""
    if kind == "none":
        return None

    def build(group: int, fc: nn.Linear) -> Optional[nn.Module]:
        if group not in groups:
            return None
        scale = ck.stage_drop_prob(1.0, group, last_stage=3)
        size = BLOCK_SIZE.get(group, 7)
        if kind == "camdrop":
            extra = {} if top_channels is None else {"top_channels": top_channels}
            return ck.CamDrop2d(drop_prob * scale, size, classifier=fc, drop_prob_scale=scale, gamma_mode=gamma_mode,
                                **extra)
        if kind == "average":
            return AverageGuided(drop_prob * scale, size, drop_prob_scale=scale, gamma_mode=gamma_mode)
        return DropBlock(drop_prob * scale, size, drop_prob_scale=scale)

    return build


# -- training --------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, amp: bool,
             channels_last: bool) -> float:
    """Top-1 error in %."""
    model.eval()
    wrong = 0
    for i in range(0, len(images), batch):
        x = normalize(images[i:i + batch])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            wrong += int((model(x).argmax(1) != labels[i:i + batch]).sum())
    return 100.0 * wrong / len(images)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="folder holding cifar-10-batches-py (a local copy; nothing is downloaded)")
    parser.add_argument("--make-standin", metavar="DIR", help="write a random stand-in data set to DIR and exit")
    parser.add_argument("--skip-checksums", action="store_true",
                        help="read a stand-in (files that are not the real ones)")
    parser.add_argument("--regularizer", choices=REGULARIZERS, default="camdrop")
    parser.add_argument("--drop-prob", type=float, default=0.1,
                        help="final rate of the last group (group 2: a quarter of it)")
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 3], choices=[1, 2, 3])
    parser.add_argument("--top-channels", type=float, default=None,
                        help="n' as a fraction of C (default C/8; the slides sweep C/16..C/2)")
    parser.add_argument("--gamma-mode", choices=["eligible", "dropblock"], default="eligible",
                        help="CamDrop's seed rate: drop_prob is the share dropped (eligible), or the authors' rate")
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--milestones", type=int, nargs="*", default=[150, 250, 350], help="epochs where lr /= 10")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    parser.add_argument("--eval-every", type=int, default=5, help="epochs between test evaluations (and the last)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON with the settings, the log and the final error")
    args = parser.parse_args(argv)
    if not args.make_standin and not args.data:
        parser.error("--data is required (the folder holding cifar-10-batches-py)")
    return args


def train(args: argparse.Namespace) -> dict:
    """Train and evaluate one model; returns the run's record (also written to ``--out``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    train_x, train_y = (t.to(device) for t in load_cifar10(args.data, True, args.skip_checksums))
    test_x, test_y = (t.to(device) for t in load_cifar10(args.data, False, args.skip_checksums))
    factory = regularizer_factory(args.regularizer, args.drop_prob, args.groups, args.top_channels, args.gamma_mode)
    model = CifarResNet(args.depth, 10, factory).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile else model
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() == 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.milestones, 0.1)
    steps_per_epoch = max(1, len(train_x) // args.batch_size)
    total = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    guided = bool(ck.camdrop_layers(model))
    log, step, start = [], 0, time.perf_counter()
    print(f"ResNet-{args.depth}, regulariser {args.regularizer} (final rate {args.drop_prob}, groups {args.groups}), "
          f"{len(train_x)} training images, {total} steps on {device}", flush=True)
    for epoch in range(args.epochs):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum, wrong = torch.zeros((), device=device), torch.zeros((), device=device)
        order = torch.randperm(len(train_x), generator=generator, device=device)
        shares, steps = [], 0
        for k in range(steps_per_epoch):
            if step >= total:
                break
            index = order[k * args.batch_size:(k + 1) * args.batch_size]
            x, y = normalize(augment(train_x[index], generator)), train_y[index]
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            set_rate(model, ck.linear_ramp(step, total, args.drop_prob))
            with (ck.targets(forward, y) if guided else contextlib.nullcontext()), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                logits = forward(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            wrong += (logits.argmax(1) != y).sum()
            step += 1
            steps += 1
            if steps % SHARE_EVERY == 0 or step == total or k == steps_per_epoch - 1:
                shares.append(dropped_share(model))  # a few small reductions per layer: sampled
        schedule.step()
        last = epoch == args.epochs - 1 or step >= total
        record = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                  "rate": ck.linear_ramp(step, total, args.drop_prob) if args.regularizer != "none" else 0.0,
                  "train_loss": float(loss_sum) / max(1, steps),
                  "train_error": 100.0 * float(wrong) / max(1, steps * args.batch_size),
                  "dropped_share": float(torch.stack(shares).mean()) if shares else 0.0,
                  "seconds": time.perf_counter() - epoch_start}
        if last or (epoch + 1) % args.eval_every == 0:
            record["test_error"] = evaluate(model, test_x, test_y, 1000, args.amp, args.channels_last)
        log.append(record)
        print(" ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                       for key, value in record.items()), flush=True)
        if guided and (epoch + 1) % args.eval_every == 0:
            print("  " + ck.dropped_summary(model), flush=True)
        if last:
            break
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "test_error": log[-1]["test_error"], "steps": step, "seconds": time.perf_counter() - start,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "log": log}
    print(f"final test error {result['test_error']:.2f}% after {step} steps, {result['seconds']:.0f} s", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.make_standin:
        print(f"wrote a stand-in data set to {write_standin(args.make_standin)}")
        return 0
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
