"""Random CamDrop inputs for the contract tests: shapes, layouts, dtypes and CAM styles."""
import torch

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]
CAM_STYLES = ["random", "ties", "nan", "signed_zero", "constant"]


def make_x(shape, dtype, layout, gen, device):
    """x of ``shape`` in ``layout``: contiguous, channels_last, a transposed view, or a strided slice."""
    N, C, H, W = shape
    if layout == "transposed":  # dense but not contiguous: H and W swapped in memory
        return torch.randn(N, C, W, H, generator=gen).to(dtype).to(device).transpose(2, 3)
    if layout == "strided":  # not dense: every other channel of a larger tensor
        return torch.randn(N, 2 * C, H, W, generator=gen).to(dtype).to(device)[:, ::2]
    x = torch.randn(N, C, H, W, generator=gen).to(dtype).to(device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_cam(N, H, W, style, dtype, gen, device):
    cam = torch.randn(N, H, W, generator=gen)
    if style == "ties":  # few distinct values: ranking falls back on the flat index
        cam = torch.round(cam * 2) / 2
    elif style == "nan":  # NaN ranks as -inf
        cam[torch.rand(N, H, W, generator=gen) < 0.3] = float("nan")
        cam[torch.rand(N, H, W, generator=gen) < 0.1] = float("-inf")
    elif style == "signed_zero":  # -0.0 ranks equal to +0.0
        cam = torch.round(cam).clamp(-1, 1)
        cam[cam == 0] = 0.0
        cam[torch.rand(N, H, W, generator=gen) < 0.5] *= -1.0
        cam = torch.where(cam == 0, torch.where(torch.rand(N, H, W, generator=gen) < 0.5, -0.0, 0.0), cam)
    elif style == "constant":
        cam = torch.zeros(N, H, W)
    return cam.to(dtype).to(device)


def make_alpha(N, C, style, dtype, gen, device):
    alpha = torch.randn(N, C, generator=gen)
    if style in ("ties", "constant", "signed_zero"):
        alpha = torch.round(alpha)
    if style == "nan":
        alpha[torch.rand(N, C, generator=gen) < 0.2] = float("nan")
    return alpha.to(dtype).to(device)
