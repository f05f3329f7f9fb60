"""The README recipes, mirrored line for line without the scripts: timm's train.py (mixup/cutmix
soft targets, ModelEmaV3, bf16 autocast, channels_last, 2-step accumulation, grad checkpointing,
torch.compile), torchvision's reference train.py (v2 MixUp/CutMix, its EMA) and the README's Lightning
module under a real ``L.Trainer``; then the forwards that run outside a user's ``targets`` block (SAM, functional_call,
torch.func, FX, torch.export, swa_utils.update_bn, create_feature_extractor)."""
import functools
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camdrop_kernels as ck

from test_checkpointing import CLASSES as NET_CLASSES
from test_checkpointing import batch as net_batch
from test_checkpointing import make_net

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

CLASSES = 10


@pytest.fixture(autouse=True)
def _free_compiled_graphs():
    """Drop dynamo's caches after each test: compiled graphs left alive make the rest of a long
    pytest process slower (a larger heap for the garbage collector to walk)."""
    yield
    torch._dynamo.reset()


def image_batches(count, n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g), torch.randint(0, CLASSES, (n,), generator=g))
            for _ in range(count)]


def params_equal(a, b):
    """Equal parameters. (Not buffers: eager checkpointing runs BatchNorm's forward twice, so its
    running statistics move twice; that is torch.utils.checkpoint's behaviour, CamDrop or not.)"""
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------------------
# timm's train.py: main() set-up and train_one_epoch(), with the two added lines marked
# ---------------------------------------------------------------------------------------------
def timm_setup(grad_checkpointing, torchcompile=None):
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.task import ClassificationTask

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=CLASSES)
    ck.convert_resnet(model, drop_prob=0.1)                       # <- line 1, right after create_model
    if grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    model.to(memory_format=torch.channels_last)                   # --channels-last
    task = ClassificationTask(model=model, criterion=SoftTargetCrossEntropy(), device=torch.device("cpu"),
                              verbose=False)                      # mixup active: soft-target loss
    model = task.get_trainable_module()
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
    task.setup_ema(decay=0.9)                                     # --model-ema (ModelEmaV3)
    if torchcompile:
        task.compile(backend=torchcompile)                        # --torchcompile
        model = task.get_trainable_module()
    return task, model, optimizer


def timm_train_one_epoch(model, loader, optimizer, task, mixup_fn, accum_steps, amp_autocast):
    """train.py's train_one_epoch, less logging and distributed branches."""
    model.train()
    last_accum_steps = len(loader) % accum_steps
    num_updates = 0
    last_batch_idx = len(loader) - 1
    last_batch_idx_to_accum = len(loader) - last_accum_steps
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps
        input, target = mixup_fn(input, target)
        input = input.contiguous(memory_format=torch.channels_last)

        def _forward():
            with amp_autocast():
                with ck.targets(model, target):                   # <- line 2, around the task call
                    result = task(input, target)
                _loss = result["loss"]
            if accum_steps > 1:
                _loss /= accum_steps
            return _loss, result

        def _backward(_loss):
            _loss.backward()
            if need_update:
                optimizer.step()

        loss, result = _forward()
        _backward(loss)
        assert torch.isfinite(loss)
        if not need_update:
            continue
        num_updates += 1
        optimizer.zero_grad()
        task.update_ema(step=num_updates)
    return num_updates


def run_timm(grad_checkpointing, torchcompile=None):
    """--mixup 0.2 --cutmix 0.5 --smoothing 0.1 --model-ema --model-ema-decay 0.9 --channels-last --amp
    --amp-dtype bfloat16 --grad-accum-steps 2 [--grad-checkpointing] [--torchcompile]: 4 batches."""
    from timm.data import Mixup

    task, model, optimizer = timm_setup(grad_checkpointing, torchcompile)
    mixup_fn = Mixup(mixup_alpha=0.2, cutmix_alpha=0.5, label_smoothing=0.1, num_classes=CLASSES)
    amp_autocast = functools.partial(torch.autocast, device_type="cpu", dtype=torch.bfloat16)
    np.random.seed(0)  # Mixup draws lambda and mixup-or-cutmix from numpy
    torch.manual_seed(1)
    updates = timm_train_one_epoch(model, image_batches(4, n=2), optimizer, task, mixup_fn, 2, amp_autocast)
    assert updates == 2
    return task


def test_timm_train_py_flow_with_checkpointing_equals_without():
    plain, ckpt = run_timm(False), run_timm(True)
    model, ema = ckpt.get_trainable_module(), ckpt.get_trainable_module(ema=True)
    assert model.grad_checkpointing and not plain.get_trainable_module().grad_checkpointing
    assert params_equal(plain.get_trainable_module(), model)
    assert params_equal(plain.get_trainable_module(ema=True), ema)
    assert any(float(layer.last_dropped_fraction) > 0 for layer in ck.camdrop_layers(model))
    # The EMA copy carries no labels and evaluates (eval mode: CamDrop is the identity).
    assert all(layer.guide.targets is None and not layer.guide.history for layer in ck.camdrop_layers(ema))
    assert not ema.module.training
    x, _ = image_batches(1, seed=5)[0]
    with torch.no_grad():
        assert torch.isfinite(ema.module(x.contiguous(memory_format=torch.channels_last))).all()


def test_timm_train_py_flow_compiled_with_checkpointing_equals_eager_without():
    torch._dynamo.reset()
    eager, compiled = run_timm(False), run_timm(True, torchcompile="aot_eager")
    assert params_equal(eager.get_trainable_module(), compiled.get_trainable_module())
    assert params_equal(eager.get_trainable_module(ema=True), compiled.get_trainable_module(ema=True))


# ---------------------------------------------------------------------------------------------
# torchvision's references/classification/train.py
# ---------------------------------------------------------------------------------------------
class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """references/classification/utils.py's EMA (it averages buffers too: use_buffers=True)."""

    def __init__(self, model, decay, device="cpu"):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


def torchvision_train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, model_ema=None,
                                scaler=None, model_ema_steps=1, lr_warmup_epochs=0):
    model.train()
    for i, (image, target) in enumerate(data_loader):
        image, target = image.to(device), target.to(device)
        with torch.autocast(device.type, enabled=scaler is not None):  # --amp (CUDA); off here
            with ck.targets(model, target):                       # <- line 2, around the model call
                output = model(image)
            loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if model_ema and i % model_ema_steps == 0:
            model_ema.update_parameters(model)
            if epoch < lr_warmup_epochs:
                model_ema.n_averaged.fill_(0)
        assert torch.isfinite(loss)


def test_torchvision_reference_train_py_flow():
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.dataloader import default_collate
    from torchvision.transforms import v2

    device = torch.device("cpu")
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=CLASSES)
    ck.convert(model, drop_prob=0.1)                              # <- line 1, right after get_model
    model.to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model_ema = ExponentialMovingAverage(model, device=device, decay=0.9)
    mixup_cutmix = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=CLASSES),
                                    v2.CutMix(alpha=1.0, num_classes=CLASSES)])
    images, labels = map(torch.cat, zip(*image_batches(3)))
    loader = DataLoader(TensorDataset(images, labels), batch_size=4,
                        collate_fn=lambda batch: mixup_cutmix(*default_collate(batch)))
    torch.manual_seed(1)
    torchvision_train_one_epoch(model, criterion, optimizer, loader, device, epoch=0, model_ema=model_ema)
    assert any(float(layer.last_dropped_fraction) > 0 for layer in ck.camdrop_layers(model))
    model_ema.eval()
    with torch.no_grad():
        assert torch.isfinite(model_ema(images[:4])).all()


# ---------------------------------------------------------------------------------------------
# PyTorch Lightning: the README's LightningModule under a real L.Trainer
# ---------------------------------------------------------------------------------------------
README = Path(__file__).resolve().parent.parent / "README.md"

# Appended to the README's class in the generated module: records, in each process, what the CamDrop
# layers did (ddp_spawn trains in child processes; their layers' statistics never come back).
LIGHTNING_PROBE = """

import json
import os


class CamDropProbe(L.Callback):
    def __init__(self, out):
        self.out = out

    def on_fit_start(self, trainer, pl_module):
        self.batches, self.ran, self.dropped, self.dtypes = 0, 0, 0, set()
        pl_module.model.fc.register_forward_hook(lambda m, a, out: self.dtypes.add(str(out.dtype)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        for layer in ck.camdrop_layers(pl_module):
            if layer.last_dropped is not None:  # this batch's forward ran the layer
                self.ran += 1
                self.dropped += int(layer.last_dropped.sum())
                layer.__dict__["last_dropped"] = None

    def on_fit_end(self, trainer, pl_module):
        checksum = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"world_size": trainer.world_size, "global_step": trainer.global_step,
                       "batches": self.batches, "layers": len(ck.camdrop_layers(pl_module)), "ran": self.ran,
                       "dropped": self.dropped, "dtypes": sorted(self.dtypes), "checksum": checksum}, f)
"""


def readme_lightning_module(directory):
    """The README's Lightning snippet as an importable module (ddp_spawn pickles the LightningModule
    by its import path), without its two Trainer lines: the test runs its own Trainer."""
    match = re.search(r"<!-- snippet: lightning -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no Lightning snippet"
    code, _, trainer_lines = match.group(1).partition("\n\ntrainer = L.Trainer(")
    assert 'precision="bf16-mixed", accumulate_grad_batches=2)' in trainer_lines
    assert "trainer.fit(LitClassifier(), train_loader)" in trainer_lines
    (directory / "readme_lightning.py").write_text(code + LIGHTNING_PROBE)
    sys.path.insert(0, str(directory))  # (spawned processes get the parent's sys.path)
    return importlib.import_module("readme_lightning")


@pytest.mark.slow  # (about 20 s on 2 loaded cores: two spawned processes import torch, lightning and torchvision)
def test_lightning_trainer(tmp_path):
    """The README's LitClassifier, as written, under L.Trainer(precision="bf16-mixed",
    accumulate_grad_batches=2) (the README's settings) and strategy="ddp_spawn" on 2 CPU processes
    (gloo): 2 optimizer steps of 2 micro-batches each per process, the CamDrop layers ran in every
    training forward and dropped, the head ran in bfloat16, and the processes end with equal weights."""
    L = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    module = readme_lightning_module(tmp_path)
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, 3, 64, 64, generator=g), torch.randint(0, 10, (32,), generator=g))
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", precision="bf16-mixed",
                            accumulate_grad_batches=2, max_steps=2, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            default_root_dir=tmp_path, callbacks=[module.CamDropProbe(str(tmp_path))])
        trainer.fit(module.LitClassifier(), DataLoader(data, batch_size=4))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("readme_lightning", None)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2 and report["global_step"] == 2 and report["batches"] == 4, report
        assert report["layers"] == 4 and report["ran"] == 4 * 4, report  # every layer in every training forward
        assert report["dropped"] > 0, report
        assert report["dtypes"] == ["torch.bfloat16"], report  # bf16-mixed: the training_step ran under autocast
    assert reports[0]["checksum"] == reports[1]["checksum"]  # DDP kept the two processes' weights equal


# ---------------------------------------------------------------------------------------------
# Forwards outside the user's targets block
# ---------------------------------------------------------------------------------------------
def test_sam_second_forward():
    """SAM (ascend to w + e(w), then descend with the gradient there) runs two forwards per step:
    both inside one targets block work; a second forward outside it fails with advice."""
    x, y = net_batch()
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ck.targets(model, y):
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            eps = [0.05 * p.grad / (p.grad.norm() + 1e-12) for p in model.parameters()]
            for p, e in zip(model.parameters(), eps):
                p.add_(e)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, e in zip(model.parameters(), eps):
            p.sub_(e)
    opt.step()
    with ck.targets(model, y):
        F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="SAM-style second forward"):
        model(x)


def test_functional_call_and_torch_func():
    x, y = net_batch()
    model = make_net()
    params = dict(model.named_parameters())
    with ck.targets(model, y):
        out = torch.func.functional_call(model, params, (x,))
    F.cross_entropy(out, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(RuntimeError, match="no targets"):
        torch.func.functional_call(model, params, (x,))
    # torch.func transforms (on a model without BatchNorm, whose running statistics they refuse to update)
    torch.manual_seed(0)
    tiny = ck.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(8, NET_CLASSES)), 0.3, block_size=3, where="0").train()
    detached = {k: v.detach() for k, v in tiny.named_parameters()}
    loss = lambda p: F.cross_entropy(torch.func.functional_call(tiny, p, (x,)), y)  # noqa: E731
    with ck.targets(tiny, y), pytest.raises(RuntimeError, match="torch.func transforms .* loss.backward"):
        torch.func.grad(loss)(detached)
    tiny.eval()  # CamDrop is the identity there: transforms work
    assert set(torch.func.grad(loss)(detached)) == set(detached)


def test_fx_symbolic_trace():
    """In training mode each CamDrop layer becomes one call in the graph, and the GraphModule takes
    its targets from its own targets block; in eval mode the layers vanish."""
    x, y = net_batch()
    model = make_net()
    traced = torch.fx.symbolic_trace(model)
    assert len(ck.camdrop_layers(traced)) == 4
    torch.manual_seed(4)
    with ck.targets(model, y):
        expected = model(x)
    torch.manual_seed(4)
    with ck.targets(traced, y):
        assert torch.equal(traced(x), expected)
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    assert torch.equal(traced(x), model(x))


def test_torchvision_feature_extractor():
    """create_feature_extractor traces train and eval graphs (FX): both run."""
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=CLASSES), drop_prob=0.3).train()
    extractor = create_feature_extractor(model, return_nodes={"layer4": "c5"})
    x, y = image_batches(1)[0]
    with ck.targets(extractor, y):
        assert extractor(x)["c5"].shape == (4, 512, 1, 1)
    assert all(float(layer.last_dropped_fraction) >= 0 for layer in ck.camdrop_layers(extractor))
    extractor.eval()
    model.eval()
    seen = {}
    model.layer4.register_forward_hook(lambda module, inputs, output: seen.update(c5=output))
    model(x)
    assert torch.equal(extractor(x)["c5"], seen["c5"])


def test_torch_export():
    x, y = net_batch()
    model = make_net()
    with ck.targets(model, y), pytest.raises(RuntimeError, match="export the model in eval mode"):
        torch.export.export(model, (x,))
    model.eval()
    exported = torch.export.export(model, (x,))
    assert torch.equal(exported.module()(x), model(x))


def test_compile_does_not_take_itself_for_export(monkeypatch):
    """Up to torch 2.11 Dynamo folds ``torch.compiler.is_exporting()`` to True under every
    torch.compile (the GPU machines run 2.11), so the export refusal must not ask it, or compiled
    training fails there. Simulated by an is_exporting() that answers True while Dynamo traces."""
    real = torch.compiler.is_exporting

    def as_in_torch_2_11():  # True whenever Dynamo traces; torch.compile's own entry check gets the truth
        return True if torch.compiler.is_compiling() else real()

    monkeypatch.setattr(torch.compiler, "is_exporting", as_in_torch_2_11)
    torch._dynamo.reset()
    x, y = net_batch()
    model = make_net()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with ck.targets(model, y):
        out = compiled(x)
    assert out.shape[0] == x.shape[0]
    assert float(sum(layer.last_dropped_fraction for layer in ck.camdrop_layers(model))) > 0


def test_swa_update_bn():
    """update_bn runs training-mode forwards without labels: it fails with advice, and works at rate 0."""
    x, y = net_batch()
    model = make_net()
    loader = [(x, y)]
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    with pytest.raises(RuntimeError, match=r"set_drop_prob\(model, 0.0\)"):
        torch.optim.swa_utils.update_bn(loader, model)
    for module, momentum in momenta.items():  # update_bn does not restore them when a forward fails
        module.momentum = momentum
    ck.set_drop_prob(model, 0.0)
    torch.optim.swa_utils.update_bn(loader, model)
    ck.set_drop_prob(model, 0.3)
    assert all(layer.drop_prob > 0 for layer in ck.camdrop_layers(model))
