#!/usr/bin/env bash
# On the CUDA machine, from the repository root: the wheelhouse (gpu_env.sh), then mmcv with CUDA
# ops and mamba-ssm's kernel, either unpacked from DIR/ext.tar.xz.part.* (made by the `build`
# step, see pack_ext.sh) or else compiled here for this GPU (skipped when $SITE already has
# them); then the chosen steps. Logs and results land in $RESULTS_DIR (default $OUT, else
# /tmp/out). See tools/gpu/README.md.
#   bash tools/gpu/run_gpu_bench.sh [DIR|-] [STEP ...]
# steps: build tests scan kernels backbones graphs bbgraphs downstream scaling profile host ab
# abgraphs (default: all but build, profile, host, ab, abgraphs, graphs and bbgraphs); `build`
# packs the compiled extensions into the results folder. Env: BACKBONES / DOWNSTREAM_DTYPES narrow the
# benchmark; AB="NAME=VALUE ..." are the switches the `ab` step measures (environment variables
# or dotted module attributes: our backbones and Mask R-CNN without and with them, the arms and
# the peer's Mask R-CNN taking turns, in one process: benchmark.py --ab --paired; `abgraphs`:
# the backbones replayed from CUDA graphs, kernel time alone); TESTS_K selects tests (pytest -k);
# SCAN_ARGS go to bench_scan.py, KERNEL_ARGS to bench_kernels.py. Steps can be run one at a time
# on the same machine: the second run finds the extensions in $SITE.
set -u
source tools/gpu/gpu_env.sh
PARTS=${1:--}
shift || true
STEPS=${*:-tests kernels backbones downstream scaling}
have_ext() { python3 -c "import torch, selective_scan_cuda, mmcv.ops" 2> /dev/null; }
if ! have_ext && ls "$PARTS"/ext.tar.xz.part.* > /dev/null 2>&1; then
  cat "$PARTS"/ext.tar.xz.part.* | xz -d | tar xf - -C "$SITE"
fi
if ! have_ext; then
  bash tools/gpu/build_ext.sh mamba 8 & bash tools/gpu/build_ext.sh mmcv $(($(nproc) - 8)); wait
  have_ext || exit 1
fi
benchmark() {  # benchmark.py ARGS... > $OUT/NAME.{log,json}; its problems, then its tables
  local name=$1
  shift
  python3 tools/analysis/benchmark.py "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  grep -E "not importable|skipped|Error" "$OUT/$name.log" | cut -c1-200 | tail -5
  sed -n '/^### /,$p' "$OUT/$name.log"
}
for step in $STEPS; do
  echo "== $step ($(date +%T))"
  case $step in
    build) bash tools/gpu/pack_ext.sh "$SITE" "$OUT" ;;
    tests)
      python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py tests/test_triton_kernels.py \
        tests/test_cuda_graph.py tests/test_gpu_spatialmamba.py tests/test_gpu_damamba.py \
        ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tee "$OUT/gpu_tests.log" \
        | grep -E "passed|failed|rel err|per stage|Error" ;;
    scan)
      python3 tools/analysis/bench_scan.py ${SCAN_ARGS:-} > "$OUT/scan.log" 2>&1
      grep -E "Error|error" "$OUT/scan.log" | tail -5; sed -n '/^### /,$p' "$OUT/scan.log" ;;
    kernels)
      python3 tools/analysis/bench_kernels.py \
        ${KERNEL_ARGS:---arch small --batch 128 --dtype bf16} > "$OUT/kernels.log" 2>&1
      sed -n '/^### /,$p' "$OUT/kernels.log" ;;
    backbones)
      benchmark backbones --models ${BACKBONES:-Swin-T/timm ConvNeXt-T/timm DefMamba-T \
        DefMamba-S DefMamba-B SpatialMamba-T DAMamba-T} --iters 6 --warmup 2 ;;
    graphs)
      benchmark graphs --cuda-graphs --models ${BACKBONES:-Swin-T/timm DefMamba-T DefMamba-S \
        DefMamba-B} --iters 10 --warmup 2 ;;
    bbgraphs)
      benchmark bbgraphs --backbone-graphs --models ${BACKBONES:-Swin-T/timm DefMamba-T \
        DefMamba-S DefMamba-B SpatialMamba-T DAMamba-T} --iters 6 --warmup 2 \
        --segmentor configs/upernet_defmamba_s_ade20k.py --downstream-dtypes fp32 ;;
    downstream)
      benchmark downstream --models --iters 6 --warmup 2 --paired \
        --downstream-dtypes ${DOWNSTREAM_DTYPES:-fp32 fp16} \
        --detector configs/maskrcnn_defmamba_s_coco.py \
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
        --segmentor configs/upernet_defmamba_s_ade20k.py \
        mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py ;;
    scaling)
      GPUS=$(nvidia-smi -L | wc -l)
      [ "$GPUS" -ge 2 ] && bash tools/analysis/dist_scaling.sh "$GPUS" 80 8 2>&1 \
        | tee "$OUT/scaling.log" | tail -8 ;;
    profile)
      for dtype in bf16 fp32; do
        python3 tools/analysis/profile_backbone.py --model DefMamba-S --mode train --batch 64 \
          --dtype $dtype --rows 45 > "$OUT/profile_train_$dtype.txt" 2>&1
      done
      python3 tools/analysis/profile_backbone.py --detector configs/maskrcnn_defmamba_s_coco.py \
        --dtype fp32 --rows 45 --trace "$OUT/trace_maskrcnn.json.gz" \
        > "$OUT/profile_maskrcnn.txt" 2>&1
      python3 tools/analysis/profile_backbone.py --dtype fp32 --rows 30 \
        --detector mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
        > "$OUT/profile_maskrcnn_swin.txt" 2>&1
      grep -h -E "^## |Self CUDA time total|^per step|GPU idles|Error" "$OUT"/profile_*.txt ;;
    ab)
      benchmark ab --ab ${AB:?} --paired --models ${BACKBONES:-Swin-T/timm ConvNeXt-T/timm \
        DefMamba-T DefMamba-S DefMamba-B SpatialMamba-T DAMamba-T} --iters 6 --warmup 2 \
        --downstream-dtypes fp32 --detector configs/maskrcnn_defmamba_s_coco.py \
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py ;;
    abgraphs)  # the same switch with every classification step replayed from a CUDA graph:
      # kernel time alone, without the host's launch work
      benchmark abgraphs --cuda-graphs --ab ${AB:?} --models ${BACKBONES:-Swin-T/timm \
        DefMamba-T DefMamba-S DefMamba-B} --iters 10 --warmup 2 ;;
    host)  # where the host's time goes in an eager training step, per module and backward node
      for model in ${BACKBONES:-DefMamba-T Swin-T/timm}; do
        python3 tools/analysis/profile_backbone.py --model $model --mode train --batch 64 \
          --dtype fp32 --host --rows 25 --steps 2 2>&1 | grep -v "^USDT\|^STAGE"
      done 2>&1 | tee "$OUT/host.txt"
      python3 tools/analysis/profile_backbone.py --detector configs/maskrcnn_defmamba_s_coco.py \
        --dtype fp32 --host --rows 25 --steps 2 > "$OUT/host_maskrcnn.txt" 2>&1
      grep -A14 "module forward" "$OUT/host_maskrcnn.txt" ;;
    *) echo "unknown step $step" ;;
  esac
done
