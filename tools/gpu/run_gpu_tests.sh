#!/usr/bin/env bash
# On the CUDA machine, from the repository root: install the wheelhouse and the CUDA extensions
# (prebuilt wheels from $PREBUILT_WHEELS if it has any, else compiled by gpu_setup.sh), then run
# the GPU tests. See tools/gpu/README.md.
#   bash tools/gpu/run_gpu_tests.sh [pytest args]     (default: tests/test_gpu.py)
#   WHEELHOUSE       the folder make_wheelhouse.sh filled (default ./.whl)
#   PREBUILT_WHEELS  CUDA wheels built earlier for this GPU (default ./.gpuwheels)
#   SITE             the install folder (default /tmp/gpusite)
#   RESULTS_DIR      where the built wheels and gpu_tests.log go (default $OUT, else /tmp/out)
set -eu
SITE=${SITE:-${GPU_SITE:-/tmp/gpusite}}
RESULTS=${RESULTS_DIR:-${OUT:-/tmp/out}}
PREBUILT=${PREBUILT_WHEELS:-.gpuwheels}
export PYTHONPATH="$SITE:$PWD"
if ls "$PREBUILT"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
    "${WHEELHOUSE:-.whl}"/*.whl "$PREBUILT"/*.whl
else
  source tools/gpu/gpu_setup.sh
  mkdir -p "$RESULTS"
  cp /tmp/gpubuild/out/*.whl "$RESULTS/" || true  # keep them for PREBUILT_WHEELS next time
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, selective_scan_cuda; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m pytest -p no:cacheprovider -q -s -rA "${@:-tests/test_gpu.py}" 2>&1 | tee "$RESULTS/gpu_tests.log"
