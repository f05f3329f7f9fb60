"""camdrop_kernels: fast, exact CamDrop (CIKM 2019) for PyTorch.

``camdrop`` drops blocks around the most class-discriminative pixels (top of the CAM)
in the most important channels (top of alpha), then rescales. ``SPEC.md`` in the
repository is the contract every backend meets bit for bit.
"""
from .api import camdrop, camdrop_mask
from .convert import convert_resnet
from .guidance import channel_importance, class_activation_map
from .modules import CamDrop2d
from .training import camdrop_layers, linear_ramp, set_drop_prob, stage_drop_prob, targets, v_schedule

__version__ = "0.1.0"

__all__ = [
    "camdrop", "camdrop_mask", "channel_importance", "class_activation_map", "CamDrop2d", "convert_resnet",
    "targets", "camdrop_layers", "set_drop_prob", "linear_ramp", "v_schedule", "stage_drop_prob", "__version__",
]
