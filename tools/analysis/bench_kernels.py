"""Time mmdefscan's Triton kernels against their PyTorch references on DefMamba's shapes (and
the inference-only kernels of the other backbones: Spatial-Mamba's state-fusion read-out on 2x
the stage width, its d_inner; DAMamba's adaptive sampling, 16 channels per group).

    python tools/analysis/bench_kernels.py [--arch small] [--batch 128] [--dtype bf16]
        [--map 56 56] [--only OP]
    (--map 200 336 --batch 2 --dtype fp32: the stage-0 map of a Mask R-CNN image)

Per stage of the variant (224x224 input by default): forward and forward+backward milliseconds
of each op, PyTorch vs Triton, CUDA events, median of 20 after warm-up; a markdown table at the
end.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import switched  # noqa: E402
from mmdefscan.models.backbones.defmamba import ARCH_SETTINGS  # noqa: E402
from mmdefscan.ops import (DeformableScan, DepthwiseConv2d, layer_norm_ref,  # noqa: E402
                           merge_scans_gate_ref)
from mmdefscan.ops.layer_norm import layer_norm_triton  # noqa: E402
from mmdefscan.ops.scan_merge import merge_scans_gate_triton  # noqa: E402
from mmdefscan.ops.dynamic_adaptive_scan import adaptive_sample  # noqa: E402
from mmdefscan.ops.state_fusion import StateFusion  # noqa: E402


def timed(fn, backward, dtype, iters=20, warmup=5):
    """Median ms of fn (+ backward), under autocast to dtype as in the model (PyTorch then runs
    LayerNorm in fp32 and returns fp32)."""
    events = []
    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            out = fn()
        if backward:
            out.backward(torch.ones_like(out))  # a scalar (the deformable case sums) or a map
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in events[warmup:])[iters // 2]


def with_triton(flag, fn):
    """Run fn with the Triton kernels on or off (the switch is read at every call)."""
    def run():
        # every map size on the kernels when they are on (training sends small maps to PyTorch)
        with switched(dict(MMDEFSCAN_TRITON=flag, MMDEFSCAN_TRITON_MIN_NUMEL='0')):
            out = fn()
        return out[0].float().sum() if isinstance(out, tuple) else out
    return run


def cases(dim, height, width, batch, dtype, stage):
    dev = 'cuda'
    tokens = height * width
    # the residual stream is fp32 under autocast (the block norms' input)
    x = torch.randn(batch, height, width, dim, device=dev, requires_grad=True)
    w = torch.randn(dim, device=dev, requires_grad=True)
    b = torch.randn(dim, device=dev, requires_grad=True)
    cf = torch.randn(batch, dim, height, width, device=dev, dtype=dtype, requires_grad=True)
    scale = torch.rand(batch, dim, device=dev, dtype=dtype, requires_grad=True)
    ys = torch.randn(batch, 3, dim, tokens, device=dev, dtype=dtype, requires_grad=True)
    proj = torch.randn(batch, height, width, 2 * dim, device=dev, dtype=dtype, requires_grad=True)
    order = torch.rand(batch, tokens, device=dev).argsort(-1)
    cl = cf.permute(0, 2, 3, 1)
    scan = DeformableScan(dim, stage).to(dev)
    fusion = StateFusion(2 * dim).to(dev).eval()
    states = torch.randn(batch, 2 * dim, height, width, device=dev)
    x_dbl = torch.randn(batch, 3, tokens, device=dev, dtype=dtype)
    u = torch.randn(batch, 2 * dim, tokens, device=dev, dtype=dtype)
    skip = torch.randn(2 * dim, device=dev)

    def read_out():  # the kernel runs only without autograd
        with torch.no_grad():
            return fusion.read_out(states, x_dbl[:, 2:], u, skip)
    offset_conv = DepthwiseConv2d(dim, DeformableScan.kernel_sizes[stage]).to(dev)
    mixer_conv = DepthwiseConv2d(dim, 3).to(dev)
    groups = dim // 16
    offsets = torch.randn(batch, height, width, 2 * groups, device=dev, dtype=dtype) * 2

    def sample():
        with torch.no_grad():
            return adaptive_sample(cf, offsets, groups)
    return {
        'deformable sample + bias + sort': (with_triton('0', lambda: scan(cf)),
                                            with_triton('1', lambda: scan(cf))),
        'depthwise conv kxk (offset net)': (with_triton('0', lambda: offset_conv(cf)),
                                            with_triton('1', lambda: offset_conv(cf))),
        'depthwise conv 3x3 (token mixer)': (with_triton('0', lambda: mixer_conv(cf)),
                                             with_triton('1', lambda: mixer_conv(cf))),
        'LayerNorm (B,H,W,C)': (lambda: layer_norm_ref(x, w, b, 1e-5),
                                lambda: layer_norm_triton(x, w, b, 1e-5, out_dtype=dtype)),
        'offset net LN*scale+GELU': (lambda: layer_norm_ref(cl, w, b, 1e-5, scale, True),
                                     lambda: layer_norm_triton(cl, w, b, 1e-5, scale, True)),
        'scan merge + gate': (lambda: merge_scans_gate_ref(ys, order, proj[..., dim:]),
                              lambda: merge_scans_gate_triton(ys, order, proj[..., dim:])),
        'state fusion read-out (2x width, inference only)': (with_triton('0', read_out),
                                                             with_triton('1', read_out)),
        'DAMamba adaptive sampling (inference only)': (with_triton('0', sample),
                                                       with_triton('1', sample)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='small', choices=sorted(ARCH_SETTINGS))
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'])
    parser.add_argument('--map', type=int, nargs=2, default=[56, 56], metavar=('H', 'W'),
                        help='stage-0 map; each later stage halves it (rounding up)')
    parser.add_argument('--only', default='', help='time only the ops whose name contains this')
    args = parser.parse_args()
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[args.dtype]
    dims = ARCH_SETTINGS[args.arch]['dims']
    rows = []
    for stage in range(4):
        dim = dims * 2 ** stage
        height, width = (-(-side // 2 ** stage) for side in args.map)
        for name, (ref, fused) in cases(dim, height, width, args.batch, dtype, stage).items():
            if args.only not in name:
                continue
            backward = 'inference only' not in name  # no backward kernel to time
            times = [timed(fn, bw, dtype) if backward or not bw else float('nan')
                     for bw in (False, True) for fn in (ref, fused)]
            rows.append((stage, name, *times))
            print(rows[-1], flush=True)
    print(f'\n### {args.arch}, batch {args.batch}, stage-0 map {args.map[0]}x{args.map[1]}, '
          f'{args.dtype}: ms (PyTorch / Triton)\n')
    print('| stage | op | fwd torch | fwd triton | fwd+bwd torch | fwd+bwd triton |')
    print('|---|---|---|---|---|---|')
    for stage, name, *t in rows:
        print(f'| {stage} | {name} | ' + ' | '.join(f'{v:.3f}' for v in t) + ' |')


if __name__ == '__main__':
    main()
