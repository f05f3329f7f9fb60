"""The nine-layer model the host-cost benchmarks time (test_training_step.py, paired.py)."""
import torch

import camdrop_kernels as ck


class Stage(torch.nn.Module):
    """Nine layers on one small map, guided by one classifier (a ResNet's stages 3-4 in miniature):
    the cost a training step pays per layer when the maps are small and Python dominates. Kinds:
    "identity layers" (the floor), "dropout layers" (nn.Dropout(0.1)), "multiply layers",
    "camdrop layers" (bound CamDrop2d, the convert default's block 3 at 7x7)."""

    def __init__(self, kind, channels=64, layers=9):
        super().__init__()
        self.kind = kind
        self.fc = torch.nn.Linear(channels, 10)
        if kind == "camdrop layers":
            self.drops = torch.nn.ModuleList(ck.CamDrop2d(0.1, 3, classifier=self.fc) for _ in range(layers))
        elif kind == "dropout layers":
            self.drops = torch.nn.ModuleList(torch.nn.Dropout(0.1) for _ in range(layers))
        elif kind == "multiply layers":
            self.drops = [lambda x: x * 1.1] * layers
        else:
            self.drops = [lambda x: x] * layers

    def forward(self, x):
        for drop in self.drops:
            x = drop(x)
        return self.fc(x.mean((2, 3)))


def bound_layer_rounds(x: torch.Tensor, labels: torch.Tensor, reps: int, inner: int = 10,
                       warm: int = 20) -> dict:
    """Host microseconds per layer of a training step (forward + backward) on ``x``: nine bound
    CamDrop2d layers ("camdrop layers") and nine nn.Dropout layers ("dropout layers"), each net of
    nine identity layers; one value per round of ``reps`` interleaved rounds of ``inner`` steps."""
    import time

    steps = {}
    for kind in ("identity layers", "dropout layers", "camdrop layers"):
        torch.manual_seed(0)
        model = Stage(kind, channels=x.shape[1]).train()

        def step(model=model, kind=kind):
            if kind == "camdrop layers":
                with ck.targets(model, labels):
                    out = model(x)
            else:
                out = model(x)
            out.sum().backward()

        steps[kind] = step
    ts = {k: [] for k in steps}
    for f in steps.values():
        for _ in range(warm):
            f()
    for _ in range(reps):
        for k, f in steps.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            ts[k].append((time.perf_counter() - t0) / inner)
    return {k: [(a - b) / 9 * 1e6 for a, b in zip(ts[k], ts["identity layers"])]
            for k in ("dropout layers", "camdrop layers")}
