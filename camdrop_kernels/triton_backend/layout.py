"""Shapes of the Triton backend's saved state (pure Python: the fake-tensor path needs no triton)."""
import torch

WORD_BITS = 32


def words_per_plane(H: int, W: int) -> int:
    """int32 words holding one plane's H*W mask bits, bit (h*W + w) in word (h*W + w) >> 5."""
    return max(1, -(-(H * W) // WORD_BITS))


def channels_spec(cfg):
    """The slot map (N, C): each top channel's index in the mask, -1 for the others."""
    return (cfg.N, cfg.C), torch.int32


def mask_spec(cfg):
    """The bit mask over the top channels only: (N, n', words per plane) int32."""
    return (cfg.N, cfg.top_channels, words_per_plane(cfg.H, cfg.W)), torch.int32
