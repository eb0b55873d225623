#!/usr/bin/env bash
# Training throughput of the demo Mask R-CNN (configs/demo, DefMamba-T) on 1 and on N GPUs:
# torchrun + tools/train.py --launcher pytorch (NCCL), same per-GPU batch on 1 and N GPUs, with
# two loader workers per rank (the config loads in the training process, num_workers=0, which
# leaves a 128-pixel demo iteration bound by the CPU and each rank waiting for the slower one).
#   bash tools/analysis/dist_scaling.sh [N=2] [ITERS=80] [BATCH_PER_GPU=8]
set -eu
N=${1:-2} ITERS=${2:-80} BATCH=${3:-8}
CFG=configs/demo/maskrcnn_defmamba_t_synthetic.py
python3 -m mmdefscan.datasets.synthetic data/synthetic
for g in 1 "$N"; do
  torchrun --nproc_per_node="$g" --master_port=$((29500 + g)) tools/train.py "$CFG" \
    --launcher pytorch --work-dir "/tmp/scaling_$g" --cfg-options train_cfg.max_iters="$ITERS" \
    train_cfg.val_interval=1000000 default_hooks.logger.interval=10 \
    train_dataloader.batch_size="$BATCH" train_dataloader.num_workers=2 \
    train_dataloader.persistent_workers=True \
    default_hooks.checkpoint.interval=1000000 > "/tmp/scaling_$g.log" 2>&1 \
    || { tail -20 "/tmp/scaling_$g.log"; exit 1; }
  grep -h "finished training" "/tmp/scaling_$g.log"
done
python3 - "$N" "$BATCH" <<'PY'
import re, sys
n, batch = int(sys.argv[1]), int(sys.argv[2])
def seconds_per_iter(gpus):
    # MMEngine logs the mean iteration time of each logging window; skip the first window (warm-up)
    log = open(f'/tmp/scaling_{gpus}.log').read()
    times = [(int(i), float(t)) for i, t in re.findall(r'Iter\(train\) \[\s*(\d+)/\d+\].*? time: ([\d.]+)', log)]
    kept = [t for i, t in times if i > 10]
    return sum(kept) / len(kept)
t1, tn = seconds_per_iter(1), seconds_per_iter(n)
print(f'| GPUs | s / iter | img / s | speed-up |\n|---|---|---|---|')
print(f'| 1 | {t1:.4f} | {batch / t1:.1f} | 1.00x |')
print(f'| {n} | {tn:.4f} | {n * batch / tn:.1f} | {n * t1 / tn:.2f}x |')
PY
