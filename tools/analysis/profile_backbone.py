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

On CUDA a last table says where the GPU waits for the host: every gap between kernels is
charged to the host range that launched the kernel ending it (a module's forward ``## Name``
with ``--host``, a backward node, the optimizer step, else the outermost operator).
``--trace PATH`` also writes the profiled steps as a Chrome trace (``.json.gz`` compresses).
"""
import argparse
import gzip
import json
import os.path as osp
import sys
import tempfile
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
    parser.add_argument('--trace', help='write the profiled steps as a Chrome trace here')
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
        # (Optimizer.step#..., a module's ## range with --host) spans the queue ahead of it
        busy = sum(e.self_device_time_total for e in averages if e.device_type == DeviceType.CUDA
                   and not e.key.startswith(('Optimizer.', 'ProfilerStep', '## '))
                   ) / 1e3 / args.steps
        print(f'per step: wall {wall:.1f} ms, host until the step returns {host:.1f} ms, '
              f'kernels {busy:.1f} ms (the GPU idles {max(wall - busy, 0):.1f} ms: host-bound '
              f'where host ~ wall)')
    if args.trace or device.type == 'cuda':
        with tempfile.TemporaryDirectory() as tmp:
            path = args.trace or osp.join(tmp, 'trace.json')
            prof.export_chrome_trace(path)
            if device.type == 'cuda':  # the idle table reads the trace back
                with (gzip.open if path.endswith('.gz') else open)(path, 'rt') as f:
                    idle = gpu_idle_by_launcher(json.load(f)['traceEvents'])
                print_idle_rows(idle, args.steps, args.rows)


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


KERNEL_CATS = ('kernel', 'gpu_memcpy', 'gpu_memset')
LAUNCH_CATS = ('cuda_runtime', 'cuda_driver')
NAMED_RANGES = ('## ', 'autograd::engine::evaluate_function: ', 'Optimizer.')


def gpu_idle_by_launcher(events):
    """{host range: (gaps, idle us)}: each gap in the GPU's work (from the end of all earlier
    kernels to the start of the next) charged to the innermost named range (module forward,
    backward node, optimizer step; else the outermost operator) around the host call that
    launched the kernel ending the gap, on that call's thread. ``events``: a Chrome trace's."""
    kernels = sorted((e for e in events if e.get('cat') in KERNEL_CATS), key=lambda e: e['ts'])
    launches = {e['args']['correlation']: e for e in events
                if e.get('cat') in LAUNCH_CATS and 'correlation' in e.get('args', {})}
    gaps, busy_until = {}, None  # thread -> [(launch time, idle us)]
    for k in kernels:
        if busy_until is not None and k['ts'] > busy_until:
            call = launches.get(k.get('args', {}).get('correlation'))
            key = (call['pid'], call['tid']) if call else None
            gaps.setdefault(key, []).append((call['ts'] if call else 0, k['ts'] - busy_until))
        busy_until = max(busy_until or 0, k['ts'] + k['dur'])
    ranges = {}
    for e in events:
        if e.get('ph') == 'X' and e.get('cat') in ('user_annotation', 'cpu_op'):
            ranges.setdefault((e['pid'], e['tid']), []).append(e)
    idle = {}
    for key, thread_gaps in gaps.items():
        # one sweep per thread: the stack holds the ranges open at the launch, outermost first
        todo = sorted(ranges.get(key, []), key=lambda e: (e['ts'], -e['dur']))[::-1]
        stack = []
        for t, wait in sorted(thread_gaps):
            while todo and todo[-1]['ts'] <= t:
                stack.append(todo.pop())
            stack = [e for e in stack if e['ts'] + e['dur'] >= t]
            named = [e['name'] for e in stack if e['name'].startswith(NAMED_RANGES)]
            name = (named[-1] if named else stack[0]['name'] if stack else
                    '(no range)' if key else '(no launch)')
            count, total = idle.get(name, (0, 0.0))
            idle[name] = (count + 1, total + wait)
    return idle


def print_idle_rows(idle, steps, rows):
    """The idle table of :func:`gpu_idle_by_launcher`, per step, largest first."""
    total = sum(t for _, t in idle.values())
    print(f'\nThe GPU idles {total / 1e3 / steps:.1f} ms per step between kernels, waiting on:')
    print('\n| host range launching the next kernel | gaps / step | idle ms / step |')
    print('|---|---|---|')
    for name, (gaps, t) in sorted(idle.items(), key=lambda kv: -kv[1][1])[:rows]:
        print(f'| {name[:80]} | {gaps / steps:.0f} | {t / 1e3 / steps:.2f} |')


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
