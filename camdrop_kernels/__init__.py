"""camdrop_kernels: fast, exact CamDrop (CIKM 2019) for PyTorch.

``camdrop`` drops blocks around the most class-discriminative pixels (top of the CAM)
in the most important channels (top of alpha), then rescales. ``SPEC.md`` in the
repository is the contract every backend meets bit for bit.
"""
from . import ops as _ops  # noqa: F401  (registers torch.ops.camdrop_kernels)
from .api import camdrop, camdrop1d, camdrop1d_mask, camdrop3d, camdrop3d_mask, camdrop_mask
from .conversion import Place, conversion_places, convert, convert_resnet, unconvert
from .guidance import channel_importance, class_activation_map
from .heads import HeadLayout, find_classifier, head_layout
from .nn import CamDrop1d, CamDrop2d, CamDrop3d
from .training import (camdrop_layers, dropped_stats, dropped_summary, label_readback, linear_ramp, set_drop_prob,
                       stage_drop_prob, targets, v_schedule)

__version__ = "0.2.0"

__all__ = [
    "camdrop", "camdrop1d", "camdrop3d", "camdrop_mask", "camdrop1d_mask", "camdrop3d_mask",
    "channel_importance", "class_activation_map", "CamDrop1d", "CamDrop2d", "CamDrop3d", "convert", "convert_resnet",
    "unconvert", "conversion_places", "find_classifier", "head_layout", "HeadLayout", "Place",
    "targets", "camdrop_layers", "set_drop_prob", "dropped_stats", "dropped_summary", "label_readback", "linear_ramp",
    "v_schedule",
    "stage_drop_prob", "__version__",
]
