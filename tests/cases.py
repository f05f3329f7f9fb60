"""Random CamDrop inputs for the contract tests: shapes of every rank, layouts, dtypes and CAM styles."""
import torch

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]
CAM_STYLES = ["random", "ties", "nan", "signed_zero", "constant"]


def make_x(shape, dtype, layout, gen, device):
    """x of ``shape`` (N, C, *S) in ``layout``: contiguous, channels_last (2-D and 3-D), a transposed
    view (the last two axes swapped in memory), or a strided slice (every other channel)."""
    N, C, *S = shape
    if layout == "transposed" and len(S) >= 2:
        x = torch.randn(N, C, *S[:-2], S[-1], S[-2], generator=gen).to(dtype).to(device)
        return x.transpose(-1, -2)
    if layout == "strided":
        return torch.randn(N, 2 * C, *S, generator=gen).to(dtype).to(device)[:, ::2]
    x = torch.randn(shape, generator=gen).to(dtype).to(device)
    if layout == "channels_last" and len(S) == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "channels_last" and len(S) == 3:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "channels_last":  # 1-D: channels innermost by a transposed view
        x = torch.randn(N, *S, C, generator=gen).to(dtype).to(device).transpose(1, 2)
    return x


def make_cam(N, S, style, dtype, gen, device):
    cam = torch.randn(N, *S, generator=gen)
    if style == "ties":  # few distinct values: ranking falls back on the flat index
        cam = torch.round(cam * 2) / 2
    elif style == "nan":  # NaN ranks as -inf
        cam[torch.rand(N, *S, generator=gen) < 0.3] = float("nan")
        cam[torch.rand(N, *S, generator=gen) < 0.1] = float("-inf")
    elif style == "signed_zero":  # -0.0 ranks equal to +0.0
        cam = torch.round(cam).clamp(-1, 1)
        cam[cam == 0] = 0.0
        cam[torch.rand(N, *S, generator=gen) < 0.5] *= -1.0
        cam = torch.where(cam == 0, torch.where(torch.rand(N, *S, generator=gen) < 0.5, -0.0, 0.0), cam)
    elif style == "constant":
        cam = torch.zeros(N, *S)
    return cam.to(dtype).to(device)


def make_alpha(N, C, style, dtype, gen, device):
    alpha = torch.randn(N, C, generator=gen)
    if style in ("ties", "constant", "signed_zero"):
        alpha = torch.round(alpha)
    if style == "nan":
        alpha[torch.rand(N, C, generator=gen) < 0.2] = float("nan")
    return alpha.to(dtype).to(device)
