#!/usr/bin/env bash
# Pack the compiled CUDA extensions installed in SITE (mmcv with ops, mamba-ssm) into DIR as
# ext.tar.xz.part.* (under 16 MiB each), debug symbols stripped (about half the wheels' size):
# another machine with the same GPU architecture, CUDA and torch can unpack them instead of
# compiling (run_gpu_bench.sh DIR does).
#   bash tools/gpu/pack_ext.sh SITE DIR
set -euo pipefail
SITE=$1 DIR=$(cd "$2" && pwd)
cd "$SITE"
strip --strip-unneeded mmcv/_ext.*.so selective_scan_cuda.*.so
tar cf - mmcv mmcv-*.dist-info mamba_ssm mamba_ssm-*.dist-info selective_scan_cuda.*.so \
  | xz -6 -T0 | split -b 16000k - "$DIR/ext.tar.xz.part."
ls -la "$DIR"
