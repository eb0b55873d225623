# On the CUDA machine, sourced from the repository root: install the wheelhouse's pure-Python
# wheels into $SITE and put it and the repository on PYTHONPATH. The CUDA extensions come from
# tools/gpu/build_ext.sh. See tools/gpu/README.md.
#   WHEELHOUSE   the folder make_wheelhouse.sh filled (default ./.whl)
#   SITE         the install folder (default /tmp/gpusite)
#   RESULTS_DIR  where the run scripts write logs and results (default $OUT, else /tmp/out)
SITE=${SITE:-${GPU_SITE:-/tmp/gpusite}}
export SITE OUT=${RESULTS_DIR:-${OUT:-/tmp/out}} PYTHONUNBUFFERED=1
mkdir -p "$SITE" "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${WHEELHOUSE:-.whl}"/*.whl
export PYTHONPATH="$SITE:$PWD"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
