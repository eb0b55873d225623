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
import torch

import mmdefscan  # noqa: F401  (registers the backbones)
from mmdefscan.analysis.images import (add_input_arguments, build_backbone, image_norm,
                                       load_image, overlay)
from mmdefscan.engine import before_the_run, load_config, run_cli
from mmdefscan.models.scan_paths import check_learned_path, image_scale, record_scan_paths


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser, 'mm config with a DefMamba or DAMamba backbone', 'image file',
                        'work_dirs/scan_paths')
    return parser.parse_args()


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
    return overlay(image, (rank / max(rank.numel() - 1, 1)).numpy())


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
    with before_the_run():
        cfg = load_config(args.config)
        backbone = build_backbone(cfg, args.checkpoint, args.prefix).to(args.device)
        check_learned_path(backbone)
        image, x = load_image(args.image, args.size, image_norm(cfg))
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
