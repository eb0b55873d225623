"""Parameters and FLOPs of a config's model (classifier, detector or segmentor).

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options k=v ...]

Counted with MMEngine's ``FlopAnalyzer`` (the counter of ``get_model_complexity_info``; one
multiply-add = one FLOP) on one image of H x W (default: 224 x 224 for mmpretrain, 800 x 1280 for
mmdet, 512 x 2048 for mmseg configs), plus the selective scans by VMamba's formula (see
mmdefscan/utils/complexity.py). Detectors run their 'tensor' forward (backbone, neck, RPN and RoI
heads on the predicted proposals), segmentors the backbone and decode head (the auxiliary head is
training-only). Operators the counter has no formula for are listed: they are not in the total
(element-wise ops, activations, DefMamba's token sort, RoIAlign / NMS, ...). Spatial-Mamba's state
fusion is counted as the three dilated 3x3 depthwise convolutions of training (27 multiply-adds
per state element, the published count); evaluation runs them as one 11x11 kernel (121), and the
difference is printed.
"""
import argparse
from functools import partial

import torch
from mmengine.config import DictAction
from mmengine.registry import init_default_scope

import mmdefscan  # noqa: F401  (registers the backbones)
from mmdefscan.engine import before_the_run, load_config, run_cli
from mmdefscan.utils.complexity import model_complexity, selective_scan_flops_ref

DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmdet': (800, 1280), 'mmseg': (512, 2048)}


def parse_args():
    parser = argparse.ArgumentParser(description='Params and FLOPs of a model config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default by task, see above)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def build_inputs(model, scope, height, width):
    """The model in eval mode and the inputs of its tensor forward."""
    image = torch.rand(3, height, width) * 255
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        meta = dict(img_shape=(height, width), ori_shape=(height, width),
                    pad_shape=(height, width), batch_input_shape=(height, width),
                    scale_factor=(1.0, 1.0))
        data = model.data_preprocessor(
            {'inputs': [image], 'data_samples': [DetDataSample(metainfo=meta)]})
        model.forward = partial(model.forward, data_samples=data['data_samples'], mode='tensor')
        return (data['inputs'], )
    data = model.data_preprocessor({'inputs': [image]})
    return (data['inputs'], )


def main():
    args = parse_args()
    with before_the_run():
        cfg = load_config(args.config, args.cfg_options)
        scope = cfg.get('default_scope', 'mmdet')
        init_default_scope(scope)
        registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
        if 'data_preprocessor' in cfg and isinstance(cfg.model, dict):
            cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
        model = registry.build(cfg.model)  # no init_weights: pretrained files are not needed
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model).eval()
    height, width = args.shape or DEFAULT_SHAPES.get(scope, (224, 224))
    inputs = build_inputs(model, scope, height, width)
    result = model_complexity(model, inputs)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    flops, scan = result['flops'], result['scan_flops']
    print(f'config: {args.config}')
    print(f'input: 1 x 3 x {height} x {width}')
    print(f'params: {result["params"] / 1e6:.2f} M (backbone {backbone / 1e6:.2f} M)')
    ref = sum(selective_scan_flops_ref(**call) for call in result['scan_calls'])
    print(f'FLOPs: {flops / 1e9:.3f} G = {(flops - scan) / 1e9:.3f} G counted by MMEngine + '
          f'{scan / 1e9:.3f} G selective scan (VMamba: 9 B L D N + B D L per call)')
    print(f'       {(flops - scan + ref) / 1e9:.3f} G with the scan counted as DefMamba\'s '
          f'flops_selective_scan_ref ({ref / 1e9:.3f} G, 3.5 B L D N + B D L)')
    if result['fused_fusion_extra']:
        print(f'       state fusion counted as the dilated 3x3 convolutions of training; '
              f'evaluation\'s 11x11 kernel adds {result["fused_fusion_extra"] / 1e9:.3f} G')
    if result['uncounted']:
        ops = ', '.join(f'{op} x{n}' for op, n in sorted(result['uncounted'].items()))
        print(f'not counted (no FLOP formula): {ops}')


if __name__ == '__main__':
    run_cli(main)
