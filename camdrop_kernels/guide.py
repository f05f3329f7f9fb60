"""What guides a CamDrop layer that is not handed ``cam`` and ``alpha``, and what it reports.

A :class:`Guide` belongs to one layer. It holds:

- the guidance mode: ``"classifier"`` (the bound classifier's weights for the batch's targets:
  ``channel_importance`` and ``class_activation_map``) or ``"self"`` (SPEC.md v2.1: the map's
  own channel means and channel-mean map, no classifier, no targets);
- the bound classifier and, when ``convert`` bound it, its name in the model, so that
  ``targets`` can follow a head that was replaced (fine-tuning) instead of guiding by the old one;
- the targets :class:`Scope` of the ``targets`` block the layer runs in (one thread's: another
  thread's forward is refused), and the history that activation checkpointing needs (a forward
  recomputed during backward gets the targets of its original forward, found by its seed);
- the statistics of its last training forward, and whether it ran in the current block.

``training.targets`` drives it through :meth:`Guide.follow`, :meth:`Guide.enter` and
:meth:`Guide.leave`; ``nn.CamDropNd`` asks :meth:`Guide.guidance` and calls :meth:`Guide.record`.
"""
from __future__ import annotations

import collections
import threading
import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import heads, validation
from .guidance import cam_unchecked, check_classifier_weight, importance, self_guidance

MODES = ("classifier", "self")
MISSING_TARGETS = ("error", "skip")
# Activation checkpointing: a guide remembers the targets of its last HISTORY forwards (weakly)
# and holds the last RECENT distinct targets tensors (strongly), so that a forward recomputed
# during backward finds them; older ones stay findable while something else (the loss) holds them.
HISTORY = 256
RECENT = 4
_MISSING = object()


class Scope:
    """One ``targets`` block (or one ``set_targets`` call): the batch's targets, the thread that
    handed them, and the channel importances its layers share within one forward of the model."""

    __slots__ = ("targets", "thread", "memo", "seen", "ref", "sized", "__weakref__")

    def __init__(self, targets: Optional[Tensor]) -> None:
        self.targets = targets
        self.sized = False  # its layers' statistics were sized for its batch (a targets block's are)
        self.thread = threading.get_ident()
        self.memo: dict = {}
        self.seen: set = set()
        self.ref = None if targets is None else weakref.ref(targets)  # (what the checkpoint history keeps)


def _autocast_state(device_type: str):
    """What autocast would make of the importance's matmul (soft targets) on this device type."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # (older torch: no per-device query)
        return torch.is_autocast_enabled()
    return None


class Guide:
    """The guidance and statistics of one CamDrop layer (see the module's docstring)."""

    eager_mark: Optional[tuple] = None  # mark() after the last eager record (see CamDropNd._record)
    presized = False  # (for guides pickled before it existed; see __init__)

    def __init__(self, owner: str, mode: str = "classifier", missing_targets: str = "error") -> None:
        self.owner = owner  # the layer's class name, for messages
        self.mode = validation.check_choice("guidance", mode, MODES)
        self.missing_targets = validation.check_choice("missing_targets", missing_targets, MISSING_TARGETS)
        self.classifier: Optional[nn.Module] = None
        self.path: Optional[str] = None  # the classifier's name in the model convert bound it in
        self.layout = None  # how the classifier's features map to the pooled channels (heads.HeadLayout)
        self.norm: Optional[nn.Module] = None  # the LayerNorm whose gain the layout folds in
        self.scope: Optional[Scope] = None
        self.history: "collections.OrderedDict[int, Optional[weakref.ref]]" = collections.OrderedDict()
        self.recent: "collections.deque[Tensor]" = collections.deque(maxlen=RECENT)
        self.last_dropped: Optional[Tensor] = None
        self.last_rate: Optional[Tensor] = None
        self.numel = 1  # elements of the last training batch (the layer's _numel buffer mirrors it)
        self.runs = 0  # training forwards recorded (eager); see ran_since
        self.idle = False  # did not run in the last targets block although the model was training
        # A targets block sized the statistics (compiled forwards then write them in place). Set here,
        # not only on the class: dynamo guards on whether the instance holds it, so a first write
        # later would recompile.
        self.presized = False

    # -- the classifier -------------------------------------------------------------------------
    def bind(self, classifier: nn.Module, path: Optional[str] = None, layout=None,
             norm: Optional[nn.Module] = None) -> None:
        if not _is_classifier(classifier):
            raise TypeError(f"classifier must be a module with a (num_classes, features) weight (the final nn.Linear, "
                            f"or a 1x1 conv); got {type(classifier).__name__}")
        self.classifier, self.path, self.layout, self.norm = classifier, path, layout, norm
        self.mode = "classifier"

    def follow(self, model: nn.Module) -> None:
        """Bind the module now at the classifier's name in ``model`` when it is not the one bound
        (the head was replaced: ``model.fc = nn.Linear(...)``, timm's ``reset_classifier``), so the
        layer is guided by the head that trains. A name that no longer leads to a module with a 2-D
        weight is an error, not a silent fallback to the old head."""
        if self.path is None or self.mode != "classifier":
            return
        try:
            head = model.get_submodule(self.path)
        except AttributeError:
            return  # (targets handed to a part of the model that does not hold the classifier)
        if head is self.classifier:
            return
        if not _is_classifier(head):
            raise RuntimeError(
                f"{self.owner} was bound to the classifier at {self.path!r}, which is now a {type(head).__name__} "
                "without a (num_classes, features) weight (a model reset with num_classes=0?): bind the layers to "
                "the new final linear layer (layer.bind(...)), or convert the model after replacing its head")
        layout = heads.layout_for(model, head, strict=False)  # (the new head may pool differently)
        norm = model.get_submodule(layout.norm) if layout is not None and layout.norm else None
        self.classifier, self.layout, self.norm = head, layout, norm

    # -- targets --------------------------------------------------------------------------------
    def enter(self, scope: Scope) -> Optional[Scope]:
        """Make ``scope`` current; return the one it replaces (for :meth:`leave`). Another thread's
        open block on the same layer is refused: the layers would guide each thread's batch by the
        other's labels."""
        previous = self.scope
        if previous is not None and previous.thread != scope.thread and previous.targets is not None:
            raise RuntimeError(
                f"{self.owner}: another thread is inside a camdrop_kernels.targets block of this model: one model "
                "cannot be trained by two threads at once (the layers hold one batch's targets). Give each "
                "thread its own copy of the model (copy.deepcopy), or use DistributedDataParallel")
        self.scope = scope
        return previous

    def leave(self, previous: Optional[Scope]) -> None:
        self.scope = previous
        # Sized statistics serve the forwards of a targets block; after it, compiled forwards assign
        # them again (unless an enclosing block sized them), so a model compiled for steps outside
        # any block keeps one graph for those.
        self.presized = previous is not None and previous.sized

    def set_targets(self, targets: Optional[Tensor]) -> None:
        """Targets for the forwards that follow, outside any block (None clears them)."""
        self.scope = None if targets is None else Scope(targets)

    @property
    def targets(self) -> Optional[Tensor]:
        scope = self.scope
        return None if scope is None else scope.targets

    # -- guidance -------------------------------------------------------------------------------
    def guidance(self, x: Tensor, seed: Tensor, compiling: bool) -> Optional[Tuple[Tensor, Tensor]]:
        """(cam, alpha) for x; None when this batch is to be skipped (no targets, "skip")."""
        if self.mode == "self":
            return self_guidance(x)
        classifier = self.classifier
        if classifier is None:
            raise RuntimeError(
                f"{self.owner}.forward(x) needs guidance: call forward(x, cam, alpha), bind the layer to the model's "
                f"classifier ({self.owner}(..., classifier=model.fc), layer.bind(...), or camdrop_kernels.convert), "
                f"or use guidance='self'")
        scope = self.scope
        if compiling:
            targets = None if scope is None else scope.targets
        else:
            if scope is not None and scope.thread != threading.get_ident() and scope.targets is not None:
                raise RuntimeError(
                    f"{self.owner}: this forward runs in another thread than the targets block that holds this "
                    "batch's labels: run each thread's forward inside its own targets block, on its own copy of "
                    "the model")
            targets = self._eager_targets(seed)
        if targets is None:
            if self.missing_targets == "skip":
                return None
            raise RuntimeError(
                f"{self.owner} is in training mode but has no targets for this batch: run the forward pass inside "
                "`with camdrop_kernels.targets(model, labels): ...` (every training-mode forward, e.g. also a "
                "SAM-style second forward). A forward that should drop nothing (e.g. torch.optim.swa_utils."
                "update_bn) can run after camdrop_kernels.set_drop_prob(model, 0.0); or construct the layers with "
                "missing_targets='skip' to make them the identity when no targets are given")
        if targets.shape[0] != x.shape[0]:
            raise ValueError(f"targets hold {targets.shape[0]} samples but the batch has {x.shape[0]}")
        weight = check_classifier_weight(classifier.weight, x, self.owner)
        # (from detached inputs: no graph, without the cost of a no_grad context)
        alpha = self._importance(weight, targets, x.shape[1], scope, compiling)
        cam = cam_unchecked(x.detach(), alpha)
        return cam, alpha

    def _importance(self, weight: Tensor, targets: Tensor, channels: int, scope: Optional[Scope],
                    compiling: bool) -> Tensor:
        """alpha for this batch; in eager mode shared through the scope by the layers with the same
        classifier weight (same version) and channel count (a ResNet stage's blocks), so it is
        computed once a stage, not once a layer. Not while compiling (the graph is traced once) nor
        while a CUDA graph is captured (a replay must recompute it)."""
        if (compiling or scope is None or targets is not scope.targets or targets.is_inference()
                or weight.is_inference() or (weight.is_cuda and torch.cuda.is_current_stream_capturing())):
            # (inference tensors keep no version counter, so a shared value could not see them change)
            return importance(weight.detach(), targets, channels, self.layout, self.norm)
        # Shared within one forward of the model only: a layer that already ran since the memo was
        # last cleared starts a new forward, which clears it. So weights updated between two
        # forwards of one block without a version bump (fused optimizers, .data writes) are never
        # missed, and the memo holds one forward's entries at most.
        me = id(self)
        if me in scope.seen:
            scope.memo.clear()
            scope.seen.clear()
        scope.seen.add(me)
        # (autocast matters to soft targets' matmul only; a gather of class indices is exact)
        key = (id(weight), weight._version, targets._version, channels, self.layout, id(self.norm),
               None if self.norm is None else _version(self.norm.weight),
               None if targets.dim() == 1 else _autocast_state(weight.device.type))
        hit = scope.memo.get(key)
        if hit is not None and hit[0] is weight:  # (the entry holds the weight: its id cannot be reused)
            return hit[1]
        alpha = importance(weight.detach(), targets, channels, self.layout, self.norm)
        scope.memo[key] = (weight, alpha)
        return alpha

    def _eager_targets(self, seed: Tensor) -> Optional[Tensor]:
        """This forward's targets, in eager mode.

        Activation checkpointing runs a checkpointed forward again during backward, after the
        ``targets`` block has ended, with the random state restored, so the recomputation draws the
        same seed. Every forward's targets are therefore remembered under its seed (a CPU value:
        reading it does not sync), and a forward inside the backward pass looks its seed up: found,
        it gets the original forward's targets (the same CAM, channels and mask); not found, it is a
        genuinely new forward (or an unrecorded one, which fails with advice)."""
        targets = self.targets
        if seed.device.type != "cpu":  # drawn on the device (CUDA graph capture): no key without a sync
            return targets
        key = int(seed)
        if torch._C._current_graph_task_id() != -1:  # inside a backward pass
            entry = self.history.get(key, _MISSING)
            if entry is not _MISSING:
                return self._resolve(entry)
            if targets is None:
                raise RuntimeError(
                    f"{self.owner}: a forward is running during backward (activation checkpointing recomputing "
                    "it?) but no earlier eager forward of this layer drew its seed, so its targets are unknown. If "
                    "a compiled module is checkpointed, compile the model with the checkpointing inside it instead "
                    "(e.g. timm's set_grad_checkpointing(True), then torch.compile); otherwise the checkpoint must "
                    "restore the random state (torch.utils.checkpoint's preserve_rng_state=True, the default) and "
                    f"recompute within {HISTORY} forwards")
            return targets
        if targets is not None:
            scope = self.scope
            self.history[key] = scope.ref if scope is not None and scope.targets is targets else weakref.ref(targets)
            if not any(t is targets for t in self.recent):
                self.recent.append(targets)
        elif self.missing_targets == "skip":
            self.history[key] = None
        else:
            return None
        self.history.move_to_end(key)
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)
        return targets

    def _resolve(self, entry: Optional[weakref.ref]) -> Optional[Tensor]:
        if entry is None:  # the original forward had no targets and was skipped
            return None
        targets = entry()
        if targets is None:
            raise RuntimeError(
                f"{self.owner}: activation checkpointing is recomputing a forward whose targets have been freed: "
                "keep the labels alive until backward (or keep the `targets` block open around backward)")
        return targets

    # -- statistics -----------------------------------------------------------------------------
    def record(self, dropped: Tensor, rate: Tensor, compiling: bool) -> None:
        """Keep a training forward's statistics. Under torch.compile they are copied into the tensors
        already there when ``targets`` sized them for the batch, because inside a checkpointed region
        (torch.utils.checkpoint) dynamo refuses to assign attributes but allows in-place writes.
        Without a ``targets`` block (self guidance) they are assigned, without reading the old ones:
        reading them would make the first compiled step (none yet) and the next (some) trace
        differently, i.e. recompile the whole model at its second step."""
        if compiling and self.presized:  # (the old ones are read only here: see above)
            last_dropped, last_rate = self.last_dropped, self.last_rate
            if (last_dropped is not None and last_rate is not None
                    and last_dropped.shape == dropped.shape and last_dropped.dtype == dropped.dtype
                    and last_dropped.device == dropped.device and last_rate.shape == rate.shape
                    and last_rate.dtype == rate.dtype and last_rate.device == rate.device):
                last_dropped.copy_(dropped)
                last_rate.copy_(rate)
                return
        self.last_dropped, self.last_rate = dropped, rate
        if compiling:
            # New tensors: a later eager forward must not take one whose id reuses the memory of its own
            # last statistics for "nothing changed since" and skip refilling the count.
            self.eager_mark = None
        else:
            self.runs += 1

    def size_statistics(self, n: int, device: torch.device) -> None:
        """Give last_dropped and last_rate the shape (n,) on ``device``, so that a compiled forward
        writes them in place (``targets`` calls it before the batch's forward)."""
        self.presized = True
        d, r = self.last_dropped, self.last_rate
        if d is None or d.shape != (n,) or d.device != device or r is None or r.shape != (n,) or r.device != device:
            self.last_dropped = torch.zeros((n,), dtype=torch.int64, device=device)
            self.last_rate = torch.zeros((n,), dtype=torch.float32, device=device)

    def mark(self) -> tuple:
        """A token of the statistics as they are now; :meth:`ran_since` tells whether a training
        forward recorded new ones since (eager: a new tensor; compiled: an in-place write)."""
        d = self.last_dropped
        return self.runs, id(d), _version(d)

    def ran_since(self, token: tuple) -> bool:
        return token != self.mark()

    def __getstate__(self):
        # Copies and pickles never carry a batch's labels.
        state = self.__dict__.copy()
        state.update(scope=None, history=collections.OrderedDict(), recent=collections.deque(maxlen=RECENT),
                     presized=False)
        return state


def _version(t: Optional[Tensor]) -> Optional[int]:
    """A tensor's version counter; None for none and for inference tensors (they keep none: a layer
    that ran in train mode under torch.inference_mode leaves such statistics)."""
    return None if t is None or t.is_inference() else t._version


def _is_classifier(module) -> bool:
    """A module with a (K, C') weight: a linear layer, or a 1x1 conv (its trailing axes of size 1);
    a DTensor (FSDP2, tensor parallel) counts: its full value is gathered when the guidance needs it."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        return False
    if type(weight).__name__ == "DTensor":
        return True
    return weight.dim() >= 2 and all(size == 1 for size in weight.shape[2:])
