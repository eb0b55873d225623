#!/usr/bin/env bash
# Create (or reuse) .venv/ with torch, the OpenMMLab stack (mmcv WITH ops) and mmdefscan in
# editable mode. Idempotent: a stamp records what was installed, so a second run takes seconds.
#   TORCH_SPEC   torch requirement used only when the venv cannot import torch (default torch==2.13.0;
#                a torch already visible to the venv, e.g. a user's CUDA build, is kept)
#   WHEEL_CACHE  where the locally built mmcv wheel is kept (default .wheels/, git-ignored)
#   MMDEFSCAN_VENV  the virtual environment to set up (default .venv/)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MMDEFSCAN_VENV:-.venv}
PY=$VENV/bin/python
WHEEL_CACHE=${WHEEL_CACHE:-$PWD/.wheels}
STAMP=$VENV/.mmdefscan-setup
# mmpretrain imports torchvision at import time. Where none imports (no wheel for this torch
# build), the stand-in of tools/torchvision_stub.py (what mmpretrain imports, nothing else) goes
# into the venv as the package torchvision; installing torchvision later replaces it.
# `bash tools/setup_env.sh --torchvision-stub` runs this step alone on an existing venv.
install_torchvision_stub() {
  if "$PY" -c "import torchvision" 2>/dev/null; then
    return 0
  fi
  local site
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  mkdir -p "$site/torchvision"
  cp tools/torchvision_stub.py "$site/torchvision/__init__.py"
  echo "[setup] torchvision does not import: installed the stand-in $site/torchvision"
}
if [ "${1:-}" = "--torchvision-stub" ]; then
  install_torchvision_stub
  exit 0
fi
want=$(cat tools/setup_env.sh setup.py tools/torchvision_stub.py | sha1sum | cut -c1-16)
if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
# --system-site-packages keeps a torch that the user already installed outside the venv.
[ -x "$PY" ] || python3 -m venv --system-site-packages "$VENV"
# (the grep drops pip's noise about unreachable extra-index folders on some machines)
pip() { "$PY" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install -q -U "pip>=23" "setuptools<81" wheel ninja
"$PY" -c "import torch" 2>/dev/null || pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q "numpy" "mmengine==0.10.7"

# mmcv 2.1.0 has no wheel for modern torch on PyPI: build it once from the sdist (with ops) and cache it.
if ! "$PY" -c "import mmcv, mmcv.ops" 2>/dev/null; then
  mkdir -p "$WHEEL_CACHE"
  if ! pip install -q --no-deps --only-binary=:all: --find-links "$WHEEL_CACHE" "mmcv==2.1.0" 2>/dev/null; then
    echo "[setup] building mmcv 2.1.0 with ops from source (about 8 min on 2 cores, cached in $WHEEL_CACHE)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      pip wheel -q --no-deps --no-build-isolation -w "$WHEEL_CACHE" "mmcv==2.1.0"
    pip install -q --no-deps --find-links "$WHEEL_CACHE" "mmcv==2.1.0"
  fi
  pip install -q addict yapf packaging pyyaml opencv-python-headless
fi
pip install -q "mmdet==3.3.0" "mmsegmentation==1.2.2" "mmpretrain==1.2.0" \
  ftfy regex importlib_metadata pytest
# Triton: optional for users (CUDA kernels); the tests run its kernels in the CPU interpreter
pip install -q "triton>=3.0"
# ONNX export (tools/deployment/pytorch2onnx.py; torch's exporter needs onnxscript) and its tests
pip install -q onnx onnxscript onnxruntime
pip install -q --no-deps -e .
install_torchvision_stub
"$PY" -c "import torch, mmcv.ops, mmdet, mmseg, mmpretrain, mmdefscan; print('[setup] ok: torch', torch.__version__, '| mmcv', mmcv.__version__, '| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__, '| mmpretrain', mmpretrain.__version__)"
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s"
