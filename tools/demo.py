"""`make demo`: Mask R-CNN + DefMamba-T on the embedded synthetic shapes, end to end.

Generates the dataset, trains with tools/train.py, tests with tools/test.py (plain and --tta),
prints bbox / segm mAP and leaves painted predictions in work_dirs/demo/vis/.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/demo/maskrcnn_defmamba_t_synthetic.py'
METRIC = re.compile(r'coco/(bbox|segm)_mAP: ([\d.]+)\s+coco/\1_mAP_50: ([\d.]+)')


def run(args):
    """Run a tool, streaming its output, and return that output."""
    print('$', ' '.join(args), flush=True)
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONWARNINGS='ignore'))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        print(line, end='', flush=True)
    if proc.wait():
        sys.exit(f'demo: {args[0]} failed (exit {proc.returncode})')
    return ''.join(lines)


def metrics(output):
    found = {kind: (float(ap), float(ap50)) for kind, ap, ap50 in METRIC.findall(output)}
    if set(found) != {'bbox', 'segm'}:
        sys.exit('demo: no bbox/segm mAP found in the test output')
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, help='training iterations (config default: 500)')
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    from mmdefscan.datasets.synthetic import generate
    start = time.time()
    generate(os.path.join(REPO, 'data/synthetic'))
    # tools/test.py evaluates right after training: no validation pass inside training
    options = ['--cfg-options', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']
    if args.iters:
        options += [f'train_cfg.max_iters={args.iters}', f'param_scheduler.1.end={args.iters}',
                    f'default_hooks.checkpoint.interval={args.iters}']
    run(['tools/train.py', CONFIG, '--work-dir', args.work_dir, *options])
    with open(os.path.join(REPO, args.work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    trained = time.time()
    plain = metrics(run(['tools/test.py', CONFIG, checkpoint, '--work-dir',
                         os.path.join(args.work_dir, 'test'), '--show-dir',
                         os.path.abspath(os.path.join(REPO, args.work_dir, 'vis'))]))
    tta = metrics(run(['tools/test.py', CONFIG, checkpoint, '--tta', '--work-dir',
                       os.path.join(args.work_dir, 'test_tta')]))
    print(f'\nMask R-CNN + DefMamba-T, synthetic shapes (40 val images): '
          f'trained in {(trained - start) / 60:.1f} min, total {(time.time() - start) / 60:.1f} min')
    print('| test | bbox mAP | bbox mAP@50 | segm mAP | segm mAP@50 |')
    print('|---|---|---|---|---|')
    for name, m in (('plain', plain), ('--tta (3 scales x flip)', tta)):
        print(f'| {name} | {m["bbox"][0]:.3f} | {m["bbox"][1]:.3f} | {m["segm"][0]:.3f} | '
              f'{m["segm"][1]:.3f} |')
    print(f'painted predictions: {os.path.join(args.work_dir, "vis")}')
    summary = dict(train_minutes=round((trained - start) / 60, 2),
                   total_minutes=round((time.time() - start) / 60, 2),
                   **{f'{name}_{kind}_{metric}': value
                      for name, m in (('plain', plain), ('tta', tta)) for kind in m
                      for metric, value in zip(('mAP', 'mAP_50'), m[kind])})
    with open(os.path.join(REPO, args.work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)


if __name__ == '__main__':
    main()
