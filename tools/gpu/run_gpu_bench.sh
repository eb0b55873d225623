#!/usr/bin/env bash
# On the device, in one call: install the pure-Python wheels, build mamba-ssm's kernel for this
# GPU (about 2.5 min on 16 cores; mmcv is skipped), run every GPU test and the backbone benchmark.
#   bash tools/gpu/run_gpu_bench.sh [benchmark args]
set -eu
SITE=/tmp/gpusite OUT=${OUT:-/tmp/out}
mkdir -p "$SITE" /tmp/gpubuild "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
  $(ls .whl/*.whl | grep -v -E '/(mmcv|mmdet|mmsegmentation|mmpretrain)-')
export PYTHONPATH="$SITE:$PWD"
ARCH=$(python3 -c "import torch;m,n=torch.cuda.get_device_capability();print(f'{m}{n}')")
( cd /tmp/gpubuild && tar xzf "$OLDPWD"/.whl/mamba_ssm-2.3.2.post1.tar.gz && cd mamba_ssm-2.3.2.post1 &&
  sed -i -E "s/arch=compute_[0-9]+,code=sm_[0-9]+/arch=compute_${ARCH},code=sm_${ARCH}/g" setup.py &&
  MAMBA_FORCE_BUILD=TRUE MAX_JOBS=16 python3 -m pip wheel -q --no-build-isolation --no-deps -w /tmp/gpubuild/out . > /tmp/gpubuild/mamba.log 2>&1 ) \
  || { tail -30 /tmp/gpubuild/mamba.log; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" /tmp/gpubuild/out/*.whl
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pytest -p no:cacheprovider -q -s -rA tests/test_gpu.py tests/test_gpu_spatialmamba.py \
  tests/test_gpu_damamba.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
python3 tools/analysis/benchmark.py --json "$OUT/benchmark.json" "$@" 2>&1 | tee "$OUT/benchmark.log" | tail -30
