"""The package's shape (issue 23): no import cycles, no source file over 800 lines, the public
functions plain defs that grep finds, one definition of each helper the review found twice."""
import ast
import inspect
import os
import subprocess
import sys

import camdrop_kernels as ck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_cycles():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_cycles.py")], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout


def test_no_source_file_over_800_lines():
    long = []
    for top in ("camdrop_kernels", "csrc"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith((".py", ".cpp", ".h", ".c")):
                    path = os.path.join(dirpath, f)
                    with open(path) as fh:
                        n = sum(1 for _ in fh)
                    if n > 800:
                        long.append((os.path.relpath(path, ROOT), n))
    assert not long, long


def test_public_functions_are_plain_defs():
    api = open(os.path.join(ROOT, "camdrop_kernels", "api.py")).read()
    tree = ast.parse(api)
    defs = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in ("camdrop", "camdrop1d", "camdrop3d", "camdrop_mask", "camdrop1d_mask", "camdrop3d_mask"):
        assert name in defs, name
        fn = getattr(ck, name)
        assert fn.__name__ == name and inspect.signature(fn).parameters["x"].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_helpers_are_defined_once():
    seen = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "camdrop_kernels")):
        for f in files:
            if f.endswith(".py"):
                tree = ast.parse(open(os.path.join(dirpath, f)).read())
                for node in tree.body:
                    if isinstance(node, ast.FunctionDef) and node.name in ("_udiv", "cdiv", "pow2", "magic",
                                                                           "words_per_plane", "resolve_count"):
                        seen.setdefault(node.name, []).append(os.path.join(dirpath, f))
                    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("_NORMALIZE", "NORMALIZE_CODES")
                                                            for t in node.targets):
                        seen.setdefault("normalize codes", []).append(os.path.join(dirpath, f))
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, twice
