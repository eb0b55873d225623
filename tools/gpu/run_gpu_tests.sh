#!/usr/bin/env bash
# On the device: build (or reuse carried) CUDA wheels, then run the GPU tests.
#   bash tools/gpu/run_gpu_tests.sh [pytest args]
# Built wheels are copied to $OUT so that a later call can carry them in .gpuwheels/.
set -eu
SITE=/tmp/gpusite
export PYTHONPATH="$SITE:$PWD"
if ls .gpuwheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl .gpuwheels/*.whl
else
  source tools/gpu/gpu_setup.sh
  mkdir -p "${OUT:-/tmp/out}"
  cp /tmp/gpubuild/out/*.whl "${OUT:-/tmp/out}/" || true
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, selective_scan_cuda; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m pytest -p no:cacheprovider -q -s -rA "${@:-tests/test_gpu.py}" 2>&1 | tee "${OUT:-/tmp/out}/gpu_tests.log"
