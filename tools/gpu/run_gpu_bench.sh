#!/usr/bin/env bash
# On the device, in one call: the wheelhouse, mmcv with CUDA ops (a wheel carried in parts from
# an earlier call, or built here), mamba-ssm's kernel built for this GPU; then the GPU tests, the
# benchmark table (backbones, Mask R-CNN and UperNet iterations) and, with 2+ GPUs, the
# torchrun training scaling. Results land in $OUT.
#   bash tools/gpu/run_gpu_bench.sh [DIR_WITH_mmcvwhl.part.*]
set -u
source tools/gpu/gpu_env.sh
PARTS=${1:-}
if [ -n "$PARTS" ] && ls "$PARTS"/mmcvwhl.part.* > /dev/null 2>&1; then
  WHEEL=/tmp/$(cat "$PARTS"/mmcvwhl.name)
  cat "$PARTS"/mmcvwhl.part.* > "$WHEEL"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEEL"
  bash tools/gpu/build_ext.sh mamba "$(nproc)" || exit 1
else
  bash tools/gpu/build_ext.sh mamba 8 & bash tools/gpu/build_ext.sh mmcv $(($(nproc) - 8)); wait
fi
python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" \
  | grep -E "passed|failed|rel err|per stage|Error"
python3 tools/analysis/benchmark.py --models Swin-T/timm Swin-T ConvNeXt-T/timm ConvNeXt-T \
  DefMamba-T DefMamba-S DefMamba-B SpatialMamba-T DAMamba-T --iters 6 --warmup 2 \
  --detector configs/maskrcnn_defmamba_s_coco.py mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
  --segmentor configs/upernet_defmamba_s_ade20k.py \
  mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py \
  --json "$OUT/benchmark.json" > "$OUT/benchmark.log" 2>&1
grep -E "^\{|not importable|Error" "$OUT/benchmark.log" | cut -c1-200 | tail -30
sed -n '/^### /,$p' "$OUT/benchmark.log"
GPUS=$(nvidia-smi -L | wc -l)
if [ "$GPUS" -ge 2 ]; then
  bash tools/analysis/dist_scaling.sh "$GPUS" 80 2>&1 | tee "$OUT/scaling.log" | tail -8
fi
