"""The README's training-loop snippets run as written."""
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def snippet(name: str) -> str:
    match = re.search(rf"<!-- snippet: {name}( \([^)]*\))? -->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README has no '{name}' snippet"
    return match.group(2)


@pytest.mark.parametrize("name", ["timm", pytest.param("torchvision", marks=pytest.mark.slow)])
def test_training_snippet_runs(name, capsys):
    pytest.importorskip(name)
    exec(compile(snippet(name), f"README:{name}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert ("step 1: loss" in out) if name == "timm" else ("final loss" in out)


def test_quickstart_runs():
    match = re.search(r"## Quickstart\s*```python\n(.*?)```", README, re.S)
    exec(compile(match.group(1), "README:quickstart", "exec"), {"__name__": "__readme__"})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit", "self"])
def test_convert_snippets_run(name):
    """The ViT and label-free snippets build and convert the models they name."""
    import camdrop_kernels as ck

    scope = {"__name__": "__readme__"}
    exec(compile(snippet(name), f"README:{name}", "exec"), scope)
    models = [scope[k] for k in (("vit", "vit_b") if name == "vit" else ("backbone", "detector"))]
    assert all(len(ck.camdrop_layers(m)) > 0 for m in models)
