#!/usr/bin/env bash
# Run the test suite under another torch (default 2.11.0, the GPU machines' version, with the
# triton its wheel pins: 3.6.0 for 2.11), on this CPU machine:
#
#   tools/compat_torch.sh [TORCH_VERSION] [pytest args...]      (default: the whole tests/ directory)
#
# The venv lives in ~/.cache/camdrop_kernels/venv-torch-VERSION and is reused. torch's wheel from
# PyPI is a CUDA build (about 3 GB with the NVIDIA libraries it imports); the CUDA tests skip
# here. The project runs from the source tree (PYTHONPATH): the native .so does not depend on
# torch, so the one built for this Python serves; the C++ op kernels (_C) do: built for another
# torch they do not load (a warning; the Python kernels serve). To test _C under this torch, run
# from a separate worktree after "$VENV/bin/python setup.py build_ext --inplace" there (the line
# below prints which serves). Triton kernels run in its interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-2.11.0}"
shift || true
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/camdrop_kernels/venv-torch-$VERSION"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, pytest, hypothesis" 2>/dev/null; then
  python3 -m venv "$VENV"
  # numpy < 2.4: Triton 3.6's interpreter needs it. timm/torchvision only for the tests that use them.
  "$VENV/bin/pip" install -q "torch==$VERSION" "numpy<2.4" pytest hypothesis pytest-benchmark
  "$VENV/bin/pip" install -q --no-deps timm || true
  "$VENV/bin/pip" install -q pyyaml huggingface_hub safetensors pillow || true
  TV=$("$VENV/bin/python" - <<'PY'
import torch
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
print(f"0.{minor + 15}.*" if major == 2 else "")
PY
)
  [ -n "$TV" ] && "$VENV/bin/pip" install -q --no-deps "torchvision==$TV" || true
fi
compgen -G "camdrop_kernels/_native.*.so" > /dev/null || python3 setup.py build_ext --inplace -q
PYTHONPATH="$PWD" "$VENV/bin/python" -W ignore -c "import torch, triton; from camdrop_kernels import cpp; \
print('torch', torch.__version__, '| triton', triton.__version__, '| C++ op kernels:', 'loaded' if cpp.C else 'not loaded')"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
