"""Time the Triton selective scan against mamba-ssm's CUDA kernel on DefMamba's shapes.

    python tools/analysis/bench_scan.py [--configs 32x2x264x256 32x2x2112x16 ...]
        [--cases infer maskrcnn]

Shapes: DefMamba-S / -T at 224x224 (3 directions, inference batch 128 bf16, training batch 64
bf16), the Mask R-CNN input of DefMamba-S (2 x 800x1344, fp32) and single images (fp32). For every
config (channels per program x warps x programs the forward's time segments make, below
``SEGMENT_BELOW`` programs, x the steps a segment is a multiple of): forward (no grad) and
forward+backward milliseconds of the Triton scan (``--bwd-configs`` sets the backward's channels
per program x warps) against mamba-ssm's kernel both ways (defaults: the shipped settings); CUDA
events, median of 10 after warm-up; the largest relative difference of the Triton scan's outputs
and gradients to the CUDA kernel's. A markdown table last.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
from mmdefscan.ops import selective_scan as scan_module  # noqa: E402
from mmdefscan.ops.kernels import selective_scan_triton as kernels  # noqa: E402

# (name, batch, channels of the 3 directions, tokens, dtype)
CASES = [(f'S-224 infer st{i}', 128, 288 * 2 ** i, 3136 // 4 ** i, torch.bfloat16)
         for i in range(4)]
CASES += [(f'S-224 train st{i}', 64, 288 * 2 ** i, 3136 // 4 ** i, torch.bfloat16)
          for i in range(4)]
CASES += [(f'T-224 train st{i}', 64, 144 * 2 ** i, 3136 // 4 ** i, torch.bfloat16)
          for i in range(2)]
CASES += [(f'S-maskrcnn st{i}', 2, 288 * 2 ** i, 67200 // 4 ** i, torch.float32)
          for i in range(4)]
# one image: a single 224x224 inference and a Mask R-CNN test image (few programs, many segments)
CASES += [('S-224 b1 st0', 1, 288, 3136, torch.float32),
          ('S-maskrcnn-test b1 st0', 1, 288, 67200, torch.float32)]


def inputs(batch, channels, length, dtype, groups=3, n_state=16):
    dev = 'cuda'
    make = lambda *s, **k: torch.randn(*s, device=dev, **k)  # noqa: E731
    u = make(batch, channels, length, dtype=dtype)
    delta = make(batch, channels, length, dtype=dtype) * 0.5 - 2
    A = -torch.arange(1, n_state + 1, device=dev).float().repeat(channels, 1)
    x_dbl = make(batch, groups, 6 + 2 * n_state, length, dtype=dtype)  # B, C as model views
    B, C = x_dbl[:, :, 6:6 + n_state], x_dbl[:, :, 6 + n_state:]
    return [u, delta, A, B, C, make(channels), make(channels) * 0.1]


def run(args, backward, triton):
    os.environ['MMDEFSCAN_TRITON_SCAN'] = '1' if triton else '0'
    args = [a.requires_grad_(backward) if a.is_floating_point() else a for a in args]
    with torch.set_grad_enabled(backward):
        y = scan_module.selective_scan_fn(*args[:5], D=args[5], delta_bias=args[6],
                                          delta_softplus=True)
        if backward:
            y.backward(torch.ones_like(y))
    return y


def timed(fn, iters=10, warmup=3):
    times = []
    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        times.append((start, end))
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in times[warmup:])[iters // 2]


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=[
        f'{kernels.MAX_BD}x{kernels.NUM_WARPS}x{kernels.WANTED_PROGRAMS}x{kernels.SEG_ALIGN}'],
        help='the forward: channels per program x warps x programs wanted x segment alignment')
    parser.add_argument('--bwd-configs', nargs='+',
                        default=[f'{kernels.BWD_MAX_BD}x{kernels.BWD_NUM_WARPS}'],
                        help='the Triton backward: channels per program x warps')
    parser.add_argument('--cases', nargs='*', help='substrings of the case names to run')
    opts = parser.parse_args()
    assert scan_module.kernel_available(), 'needs mamba-ssm selective_scan_cuda to compare'
    rows = []
    for name, batch, channels, length, dtype in CASES:
        if opts.cases and not any(c in name for c in opts.cases):
            continue
        args = inputs(batch, channels, length, dtype)
        ref_fwd = timed(lambda: run(args, False, False))
        ref_bwd = timed(lambda: run(args, True, False))
        for a in args:
            a.grad = None
        y_ref = run(args, True, False)
        g_ref = [a.grad.clone() for a in args]

        for config in opts.configs:
            bd, warps, wanted, align = map(int, config.split('x'))
            kernels.MAX_BD, kernels.NUM_WARPS = bd, warps
            kernels.WANTED_PROGRAMS, kernels.SEG_ALIGN = wanted, align
            fwd = timed(lambda: run(args, False, True))
            for bwd_config in opts.bwd_configs:
                kernels.BWD_MAX_BD, kernels.BWD_NUM_WARPS = map(int, bwd_config.split('x'))
                for a in args:
                    a.grad = None
                y = run(args, True, True)
                err = max([rel_err(y, y_ref)] + [rel_err(a.grad, g) for a, g in zip(args, g_ref)])
                fwd_bwd = timed(lambda: run(args, True, True))
                rows.append((name, f'{config} / {bwd_config}', ref_fwd, fwd, ref_bwd, fwd_bwd,
                             err))
                print(rows[-1], flush=True)
    print('\n### selective scan: mamba-ssm CUDA kernel vs Triton (ms; config: forward '
          'BDxwarpsxprogramsxalignment / backward BDxwarps)\n')
    print('| case | config | fwd cuda | fwd triton | fwd+bwd cuda | fwd+bwd triton | '
          'max rel diff to cuda |')
    print('|---|---|---|---|---|---|---|')
    for name, config, *t, err in rows:
        print(f'| {name} | {config} | ' + ' | '.join(f'{v:.3f}' for v in t) + f' | {err:.1e} |')


if __name__ == '__main__':
    main()
