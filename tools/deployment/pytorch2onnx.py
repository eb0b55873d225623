"""Export a config's model to ONNX and check it in onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [--checkpoint CKPT] [--shape H W] [--dynamic]
                                           [--out FILE] [--verify] [--latency N]
                                           [--cfg-options k=v ...]

Classification configs export backbone + head (logits), segmentation configs the whole
segmentor (logits at the input size), detection configs backbone + neck (the feature pyramid);
the input is the preprocessed image (see mmdefscan/engine/export.py). ``--dynamic`` makes the
batch symbolic, and height and width symbolic multiples of 32. ``--verify`` runs onnxruntime and
PyTorch on random images at the export size (batch 1) and, for a dynamic graph, at a second
size (batch 2) and prints the max absolute and relative errors, and PyTorch's own
float32-vs-float64 error beside them. ``--latency N`` prints the median of N forwards of both at
the export size, batch 1, with the same number of CPU threads.
"""
import argparse
import os.path as osp

import torch
from mmengine.config import DictAction

import mmdefscan  # noqa: F401  (registers the backbones)
from mmdefscan.engine import load_config, run_cli
from mmdefscan.engine.export import (build_exportable, export_onnx, float32_noise, latency, log,
                                     second_shape, verify)

DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmdet': (800, 1344), 'mmseg': (512, 512)}


def parse_args():
    parser = argparse.ArgumentParser(description='Export a model config to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='weights to load (default: the model\'s init)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='export size (default: 224 224 classification, 512 512 '
                             'segmentation, 800 1344 detection)')
    parser.add_argument('--dynamic', action='store_true',
                        help='symbolic batch, and height and width in multiples of 32')
    parser.add_argument('--out', help='ONNX file (default: the config name + .onnx)')
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with PyTorch at the export size and another')
    parser.add_argument('--latency', type=int, metavar='N', default=0,
                        help='median CPU latency of N forwards, onnxruntime and PyTorch')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    height, width = args.shape or DEFAULT_SHAPES.get(scope, (224, 224))
    out = args.out or osp.splitext(osp.basename(args.config))[0] + '.onnx'
    module = build_exportable(cfg, args.checkpoint)
    # batch 2 when dynamic: torch.export fixes a size of 1 as a constant
    image = torch.randn(2 if args.dynamic else 1, 3, height, width)
    export_onnx(module, image, out, dynamic=args.dynamic)
    kind = 'batch, height and width symbolic' if args.dynamic else 'static'
    log(f'exported {type(module).__name__.lower()} of {args.config} at {height}x{width} to '
        f'{out} ({kind}; outputs {", ".join(module.output_names)})')
    if args.verify:
        shapes = [(1, 3, height, width)]
        if args.dynamic:
            shapes.append((2, 3, *second_shape(height, width)))
        for shape, abs_err, rel_err in verify(module, out, shapes):
            log(f'verify {"x".join(map(str, shape))}: onnxruntime vs PyTorch max abs error '
                f'{abs_err:.3g}, max rel error {rel_err:.3g}')
        log(f'PyTorch float32 vs float64 at 1x3x{height}x{width}: max rel error '
            f'{float32_noise(module, shapes[0]):.3g} (the model\'s own rounding)')
    if args.latency:
        ort_s, torch_s = latency(module, out, (1, 3, height, width), args.latency)
        log(f'latency 1x3x{height}x{width}, {torch.get_num_threads()} CPU threads, median of '
            f'{args.latency}: onnxruntime {ort_s * 1e3:.1f} ms, PyTorch {torch_s * 1e3:.1f} ms')


if __name__ == '__main__':
    run_cli(main)
