#!/usr/bin/env bash
# On the CUDA machine: compile one CUDA extension from the wheelhouse's sdist for this GPU's
# architecture only and install it into $SITE.   bash tools/gpu/build_ext.sh mamba|mmcv [jobs]
# A few minutes each on 16 cores (mmcv with ops takes the longest). See tools/gpu/README.md.
#   WHEELHOUSE  the folder make_wheelhouse.sh filled (default ./.whl)
#   SITE        where the built extension is installed (default /tmp/gpusite)
#   GPU_BUILD   scratch folder of the builds (default /tmp/gpubuild)
set -eu
NAME=$1 JOBS=${2:-16} W=${WHEELHOUSE:-$PWD/.whl} SITE=${SITE:-${GPU_SITE:-/tmp/gpusite}}
B=${GPU_BUILD:-/tmp/gpubuild}/$1
mkdir -p "$B" "$SITE"
ARCH=$(python3 -c "import torch;m,n=torch.cuda.get_device_capability();print(f'{m}{n}')")
export MAX_JOBS=$JOBS TORCH_CUDA_ARCH_LIST="${ARCH:0:1}.${ARCH:1}"
cd "$B"
if [ "$NAME" = mamba ]; then
  tar xzf "$W"/mamba_ssm-*.tar.gz && cd mamba_ssm-*/
  sed -i -E "s/arch=compute_[0-9]+,code=sm_[0-9]+/arch=compute_${ARCH},code=sm_${ARCH}/g" setup.py
  export MAMBA_FORCE_BUILD=TRUE
else
  tar xzf "$W"/mmcv-*.tar.gz && cd mmcv-*/
  export MMCV_WITH_OPS=1 FORCE_CUDA=1
fi
python3 -m pip wheel -q --no-build-isolation --no-deps -w "$B/out" . > "$B/build.log" 2>&1 \
  || { tail -30 "$B/build.log"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$B"/out/*.whl
echo "built $NAME for sm_$ARCH"
