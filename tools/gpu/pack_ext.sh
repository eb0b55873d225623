#!/usr/bin/env bash
# Pack the compiled CUDA extensions installed in SITE (mmcv with ops, mamba-ssm) into DIR as
# ext.tar.xz.part.* (under 16 MiB each), debug symbols stripped: about 40 MB instead of the
# wheels' 77, so that a later call can carry them beside the wheelhouse within the 64 MiB
# limit and skip about 9 minutes of compiling (run_gpu_bench.sh unpacks them).
#   bash tools/gpu/pack_ext.sh SITE DIR
set -euo pipefail
SITE=$1 DIR=$(cd "$2" && pwd)
cd "$SITE"
strip --strip-unneeded mmcv/_ext.*.so selective_scan_cuda.*.so
tar cf - mmcv mmcv-*.dist-info mamba_ssm mamba_ssm-*.dist-info selective_scan_cuda.*.so \
  | xz -6 -T0 | split -b 16000k - "$DIR/ext.tar.xz.part."
ls -la "$DIR"
