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
