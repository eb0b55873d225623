# On the device, sourced: install the wheelhouse's pure-Python wheels into $SITE and put it and
# the repo on PYTHONPATH. The CUDA extensions come from tools/gpu/build_ext.sh.
SITE=${SITE:-/tmp/gpusite}
export SITE OUT=${OUT:-/tmp/out} PYTHONUNBUFFERED=1
mkdir -p "$SITE" "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE:$PWD"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
