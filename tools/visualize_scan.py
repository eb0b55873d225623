"""Draw where a backbone's learned scans read an image, and in which order.

    python tools/visualize_scan.py CONFIG IMAGE [--checkpoint CKPT [--prefix backbone.]]
                                   [--size 512] [--out-dir DIR] [--device cpu|cuda]

CONFIG is an mm config whose backbone is DefMamba or DAMamba (detection, segmentation or
classification; its data_preprocessor gives the normalisation), CHECKPOINT a checkpoint of that
model (keys under ``--prefix``, ``backbone.``) or, with ``--prefix ''``, of the backbone alone;
without one the backbone keeps its
random initialisation, and the tool says so. For every deformable / adaptive scan module it
writes ``NN_<module>_points.png`` (arrows from each token's pixel to the point it reads, on a
sub-grid) and, for DefMamba, ``NN_<module>_order.png`` (each token coloured by its position in
the scan order, blue first), and prints one row per module: the mean and largest offset in map
pixels and how far the order moves tokens from raster order (mean |rank - raster index| over
the token count).
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np
import torch

import mmdefscan  # noqa: F401  (registers the backbones)
from mmdefscan.engine import load_config, run_cli
from mmdefscan.models.checkpoint import load_backbone_weights
from mmdefscan.models.scan_paths import image_scale, record_scan_paths
from mmdefscan.registry import MODELS

# ImageNet statistics (RGB), when the config has no data_preprocessor
DEFAULT_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mm config with a DefMamba or DAMamba backbone')
    parser.add_argument('image', help='image file')
    parser.add_argument('--checkpoint', help='model or backbone checkpoint')
    parser.add_argument('--prefix', default='backbone.',
                        help="the backbone's keys in the checkpoint ('' for a backbone checkpoint)")
    parser.add_argument('--size', type=int, default=512,
                        help='short side of the input, rounded to a multiple of 32')
    parser.add_argument('--out-dir', default='work_dirs/scan_paths')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser.parse_args()


def build_backbone(cfg, checkpoint, prefix):
    backbone_cfg = dict(cfg.model.backbone)
    backbone_cfg.pop('init_cfg', None)
    backbone_cfg['type'] = backbone_cfg['type'].split('.')[-1]  # 'mmdefscan.DefMamba'
    backbone_cfg.pop('cuda_graph', None)  # inference only
    backbone = MODELS.build(backbone_cfg)
    if checkpoint is None:
        print('no --checkpoint: the backbone has random weights, so are its scan paths')
        return backbone
    load_backbone_weights(backbone, checkpoint, prefix=prefix or None,
                          head_prefixes=backbone.head_prefixes,
                          optional_prefixes=backbone.optional_prefixes)
    return backbone


def load_image(path, size, norm):
    """(the resized BGR image (uint8), the normalised input (1, 3, H, W))."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'image {path} does not exist or is not an image')
    scale = size / min(image.shape[:2])
    height, width = (max(32, round(side * scale / 32) * 32) for side in image.shape[:2])
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    pixels = image[..., ::-1] if norm.get('bgr_to_rgb', norm.get('to_rgb', False)) else image
    mean = np.asarray(norm.get('mean', DEFAULT_NORM['mean']), np.float32)
    std = np.asarray(norm.get('std', DEFAULT_NORM['std']), np.float32)
    tensor = torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())
    return image, tensor[None]


def draw_points(image, path, arrows_per_side=24):
    canvas = image.copy()
    height, width = path.reference.shape[:2]
    step = max(1, max(height, width) // arrows_per_side)
    for i in range(step // 2, height, step):
        for j in range(step // 2, width, step):
            start = tuple(int(round(v)) for v in path.reference[i, j].tolist())
            end = tuple(int(round(v)) for v in path.points[i, j].tolist())
            cv2.arrowedLine(canvas, start, end, (0, 255, 255), 1, cv2.LINE_AA, tipLength=0.3)
            cv2.circle(canvas, start, 1, (0, 0, 255), -1)
    return canvas


def draw_order(image, path):
    rank = path.rank.double()
    colours = cv2.applyColorMap((rank / max(rank.numel() - 1, 1) * 255).byte().numpy(),
                                cv2.COLORMAP_JET)
    colours = cv2.resize(colours, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return cv2.addWeighted(image, 0.4, colours, 0.6, 0)


def summary(path):
    map_shift = (path.points - path.reference) / image_scale(path.stride)
    shift = map_shift.norm(dim=-1)
    row = f'| {path.name} | {path.reference.shape[0]}x{path.reference.shape[1]} | ' \
          f'{shift.mean():.2f} | {shift.max():.2f} |'
    if path.rank is None:
        return row + ' raster |'
    raster = torch.arange(path.rank.numel()).view_as(path.rank)
    moved = (path.rank - raster).abs().double().mean() / path.rank.numel()
    return row + f' {moved:.3f} |'


def main():
    args = parse_args()
    cfg = load_config(args.config)
    norm = dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or DEFAULT_NORM)
    backbone = build_backbone(cfg, args.checkpoint, args.prefix).to(args.device)
    image, x = load_image(args.image, args.size, norm)
    paths = record_scan_paths(backbone, x.to(args.device))
    os.makedirs(args.out_dir, exist_ok=True)
    print(f'\n{type(backbone).__name__} on {args.image} resized to {image.shape[1]}x'
          f'{image.shape[0]}; offsets in map pixels; order: mean |rank - raster index| / tokens')
    print('\n| module | map | mean offset | largest offset | order |\n|---|---|---|---|---|')
    for index, path in enumerate(paths):
        stem = osp.join(args.out_dir, f'{index:02d}_{path.name.replace(".", "_")}')
        cv2.imwrite(stem + '_points.png', draw_points(image, path))
        if path.rank is not None:
            cv2.imwrite(stem + '_order.png', draw_order(image, path))
        print(summary(path))
    print(f'\nwrote {len(paths)} scan paths to {args.out_dir}')


if __name__ == '__main__':
    run_cli(main)
