"""What every scan of a backbone attends to, and the effective receptive field of its stages.

    python tools/analysis/scan_attention.py CONFIG IMAGE [--checkpoint CKPT [--prefix backbone.]]
        [--tokens y,x ...] [--erf N_IMAGES] [--size 512] [--out-dir DIR] [--device cpu|cuda]

CONFIG is an mm config whose backbone is DefMamba, Spatial-Mamba or DAMamba (its
data_preprocessor gives the normalisation), CHECKPOINT a checkpoint of that model (keys under
``--prefix``) or, with ``--prefix ''``, of the backbone alone; without one the backbone keeps its
random initialisation, and the tool says so. IMAGE is an image file or a folder of images (the
first one, in name order, is the one analysed).

For every token mixer and every query token (``--tokens``: pixels y,x of the resized image;
default its centre) the scan's implicit attention row, in closed form
(``mmdefscan/analysis/scan_attention.py``): ``NN_<module>_q<k>.png`` shows the mean over channels
of its absolute value on the mixer's map over the image (normalised to the row's 99.5th
percentile; the query marked white). ``--erf N``: the effective receptive field of every output
stage, averaged over the first N images of IMAGE's folder (or IMAGE alone), ``erf_stage<i>.png``
(log scale, as RepLKNet draws it). ``summary.png``: the first token's picture of every stage's
last mixer side by side, the stages' effective receptive fields below. The numbers go to ``scan_attention.pth`` (``torch.load``):
per module its name, stride, query pixels on its map and ``attention`` (Q, H, W), the mean
absolute row over channels, and per stage ``erf`` (S, H, W). One row per module is printed: the
mean distance of the attention from the query, in map pixels, and the share within 1 pixel.
"""
import argparse
import os
import os.path as osp
import re

import cv2
import numpy as np
import torch

import mmdefscan  # noqa: F401  (registers the backbones)
from mmdefscan.analysis import effective_receptive_field, record_scan_attention
from mmdefscan.analysis.images import (add_input_arguments, build_backbone, image_norm,
                                       load_image, overlay)
from mmdefscan.engine import before_the_run, load_config, run_cli

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
STAGE = re.compile(r'(?:layers|stages)\.(\d+)\.')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser, 'mm config, DefMamba, SpatialMamba or DAMamba backbone',
                        'image file, or a folder of images', 'work_dirs/scan_attention')
    parser.add_argument('--tokens', nargs='+', default=None, metavar='Y,X',
                        help='query pixels of the resized image (default: its centre)')
    parser.add_argument('--erf', type=int, default=0, metavar='N_IMAGES',
                        help='effective receptive fields averaged over N images')
    return parser.parse_args()


def image_files(path):
    if osp.isdir(path):
        files = sorted(osp.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f'{path} holds no image ({", ".join(IMAGE_SUFFIXES)})')
        return files
    if not osp.isfile(path):
        raise FileNotFoundError(f'image {path} does not exist')
    return [path]


def parse_tokens(tokens, height, width):
    if not tokens:
        return [(height // 2, width // 2)]
    points = []
    for token in tokens:
        try:
            y, x = (int(v) for v in token.split(','))
        except ValueError:
            raise ValueError(f'--tokens {token!r} is not y,x (two integers)') from None
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f'--tokens {token}: outside the resized image ({height}x{width})')
        points.append((y, x))
    return points


def normalised(values, percentile=99.5):
    top = np.percentile(values, percentile)
    return values / top if top > 0 else values


def draw_attention(image, values, point):
    canvas = overlay(image, normalised(values), interpolation=cv2.INTER_LINEAR)
    cv2.circle(canvas, (point[1], point[0]), 4, (255, 255, 255), 2, cv2.LINE_AA)
    return canvas


def side_by_side(rows):
    """One picture of rows of equal-sized pictures (empty rows left out, short rows padded)."""
    rows = [np.hstack(row) for row in rows if row]
    width = max(row.shape[1] for row in rows)
    return np.vstack([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows])


def spread(values, query):
    """(mean distance from the query in map pixels, share within 1 pixel) of a (H, W) map."""
    rows, cols = torch.meshgrid(torch.arange(values.shape[0]), torch.arange(values.shape[1]),
                                indexing='ij')
    distance = ((rows - query[0]) ** 2 + (cols - query[1]) ** 2).double().sqrt()
    total = values.sum()
    return float((values * distance).sum() / total), float(values[distance < 1.5].sum() / total)


def main():
    args = parse_args()
    with before_the_run():
        cfg = load_config(args.config)
        files = image_files(args.image)
        backbone = build_backbone(cfg, args.checkpoint, args.prefix).to(args.device)
        norm = image_norm(cfg)
        image, x = load_image(files[0], args.size, norm)
        points = parse_tokens(args.tokens, *image.shape[:2])
        images = [load_image(f, args.size, norm)[1] for f in files[:args.erf]]
        if len({i.shape for i in images}) > 1:
            raise ValueError('--erf: the images resize to different shapes; give images of one '
                             'aspect ratio')
    os.makedirs(args.out_dir, exist_ok=True)

    results = dict(image=files[0], size=image.shape[:2], tokens=torch.tensor(points), modules=[])
    print(f'\n{type(backbone).__name__} on {files[0]} resized to {image.shape[1]}x'
          f'{image.shape[0]}; distances in map pixels')
    print('\n| module | map | token | mean distance | within 1 pixel |\n|---|---|---|---|---|')
    last_of_stage = {}  # the first token's picture of each stage's last mixer
    for index, att in enumerate(record_scan_attention(backbone, x.to(args.device), points)):
        attention = att.rows.abs().mean(0)  # (Q, H, W)
        results['modules'].append(dict(name=att.name, stride=att.stride, queries=att.queries,
                                       attention=attention))
        stem = osp.join(args.out_dir, f'{index:02d}_{att.name.replace(".", "_")}')
        for k, (point, query) in enumerate(zip(points, att.queries.tolist())):
            drawn = draw_attention(image, attention[k].numpy(), point)
            cv2.imwrite(f'{stem}_q{k}.png', drawn)
            if k == 0:
                last_of_stage[STAGE.search(att.name).group(1)] = drawn
            distance, near = spread(attention[k], query)
            print(f'| {att.name} | {attention.shape[1]}x{attention.shape[2]} | {point[0]},'
                  f'{point[1]} | {distance:.2f} | {near:.3f} |')

    erf_pictures = []
    if args.erf:
        erf = effective_receptive_field(backbone, torch.cat(images).to(args.device))
        results['erf'] = erf
        for stage, values in enumerate(erf):
            scaled = torch.log10(values / values.max() * 1e3 + 1) / 3  # log scale over 3 decades
            drawn = overlay(image, scaled.numpy(), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(osp.join(args.out_dir, f'erf_stage{stage}.png'), drawn)
            erf_pictures.append(drawn)
        print(f'\neffective receptive fields of {erf.shape[0]} stages over {len(images)} images')
    cv2.imwrite(osp.join(args.out_dir, 'summary.png'),
                side_by_side([list(last_of_stage.values()), erf_pictures]))
    torch.save(results, osp.join(args.out_dir, 'scan_attention.pth'))
    print(f'\nwrote {len(results["modules"])} modules to {args.out_dir}')


if __name__ == '__main__':
    run_cli(main)
