"""Where a backbone's GPU time goes: torch.profiler's per-operator table for one workload.

    python tools/analysis/profile_backbone.py --model DefMamba-S [--mode infer|train]
        [--batch 64] [--dtype fp32|bf16|fp16] [--compile] [--rows 30] [--host]
    python tools/analysis/profile_backbone.py --detector configs/maskrcnn_defmamba_s_coco.py
        [--dtype fp32]   (or --segmentor CFG: one training iteration of the whole model)

Same model and step as tools/analysis/benchmark.py (224x224 classifier, or its Mask R-CNN /
UperNet iteration); prints the operators sorted by their device time (self time, so nested
calls are not counted twice). ``--host`` sorts by host time instead: every module's forward is
a range named ``## ClassName``, and the backward nodes are autograd's ``evaluate_function``
rows, so the table says which part of a block the host spends its time in.
"""
import argparse
import os.path as osp
import sys
import time

import torch
import torch.nn as nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from benchmark import (MODELS, Classifier, autocast, build_backbone,  # noqa: E402
                       build_downstream)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='DefMamba-S', choices=sorted(MODELS))
    parser.add_argument('--mode', default='infer', choices=['infer', 'train'])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--dtype', default='bf16', choices=['fp32', 'bf16', 'fp16'])
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--rows', type=int, default=30)
    parser.add_argument('--host', action='store_true',
                        help='host time per module forward and per backward node')
    parser.add_argument('--detector', help='a Mask R-CNN config: profile its training iteration')
    parser.add_argument('--segmentor', help='an UperNet config: profile its training iteration')
    args = parser.parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    downstream = args.detector or args.segmentor
    if downstream:
        model, x, samples = build_downstream(downstream, 'det' if args.detector else 'seg', device)
        args.mode, args.model, args.batch = 'train', downstream, x.shape[0]
    else:
        model = Classifier(build_backbone(args.model)).to(device)
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224, device=device))
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        target = torch.randint(0, 1000, (args.batch,), device=device)
    run = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if downstream:
            with autocast(device, args.dtype):
                loss, _ = model.parse_losses(model.loss(x, samples))
        elif args.mode == 'infer':
            with torch.no_grad(), autocast(device, args.dtype):
                run(x)
            return
        else:
            with autocast(device, args.dtype):
                loss = nn.functional.cross_entropy(run(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train(args.mode == 'train')
    for _ in range(3):
        step()
    wall, host = host_and_wall_ms(step, args.steps, device)
    if args.host:
        annotate_modules(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
    key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    print(f'\n## {args.model} {args.mode} batch {args.batch} {args.dtype}'
          f'{" compiled" if args.compile else ""}, {args.steps} steps')
    averages = prof.key_averages()
    if args.host:
        print_host_rows(averages, args.steps, args.rows)
    else:
        print(averages.table(sort_by=key, row_limit=args.rows, max_name_column_width=90))
    if device.type == 'cuda':
        # kernel rows only: operator rows repeat their kernels' time, and a GPU-side annotation
        # (Optimizer.step#...) spans the queue ahead of it
        busy = sum(e.self_device_time_total for e in averages if e.device_type == DeviceType.CUDA
                   and not e.key.startswith(('Optimizer.', 'ProfilerStep'))) / 1e3 / args.steps
        print(f'per step: wall {wall:.1f} ms, host until the step returns {host:.1f} ms, '
              f'kernels {busy:.1f} ms (the GPU idles {max(wall - busy, 0):.1f} ms: host-bound '
              f'where host ~ wall)')


def annotate_modules(model):
    """A profiler range around every module's forward, named ``## ClassName``."""
    ranges = []

    def enter(module, args):
        ranges.append(torch.profiler.record_function(f'## {type(module).__name__}'))
        ranges[-1].__enter__()

    def leave(module, args, output):
        ranges.pop().__exit__(None, None, None)
    for module in model.modules():
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def print_host_rows(averages, steps, rows):
    """Module forwards and backward nodes by host time per step (inclusive), and the operators
    by self host time: calls per step, ms per step, us per call."""
    def table(title, events, attr):
        # (the profiler lists each range a second time, with no time: left out)
        events = sorted((e for e in events if getattr(e, attr) > 0),
                        key=lambda e: -getattr(e, attr))[:rows]
        print(f'\n| {title} | calls / step | host ms / step | us / call |\n|---|---|---|---|')
        for e in events:
            total = getattr(e, attr)
            print(f'| {e.key[:80]} | {e.count / steps:.0f} | {total / 1e3 / steps:.2f} | '
                  f'{total / max(e.count, 1):.0f} |')
    table('module forward', [e for e in averages if e.key.startswith('## ')], 'cpu_time_total')
    table('backward node', [e for e in averages
                            if e.key.startswith('autograd::engine::evaluate_function')],
          'cpu_time_total')
    table('operator (self)', [e for e in averages if not e.key.startswith(('## ', 'autograd::'))],
          'self_cpu_time_total')


def host_and_wall_ms(step, steps, device):
    """Milliseconds per step: wall (synchronised at the end) and the host's share (time until
    ``step`` returns; the GPU queue lets the host run ahead unless something synchronises)."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync()
    start, host = time.perf_counter(), 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        host += time.perf_counter() - t0
    sync()
    return (time.perf_counter() - start) * 1e3 / steps, host * 1e3 / steps


if __name__ == '__main__':
    main()
