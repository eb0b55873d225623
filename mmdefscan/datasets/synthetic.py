"""A small deterministic dataset of textured shapes, for the demo and the tests.

Each image holds a few circles, squares and triangles with random size, colour and texture
(solid, stripes, checker, noise) on a varied background (gradients, stripes, noise), painted in
order so that later shapes occlude earlier ones. Annotations describe what is visible:

* COCO instance format: ``annotations/instances_{split}.json`` (RLE masks of the visible parts,
  boxes of the visible parts), images in ``images/{split}/``;
* ADE20K-style semantic format: ``annotations/{split}/<name>.png`` with 0 = background and
  1..3 = class index + 1 (no label is ignored).

Usage: ``python -m mmdefscan.datasets.synthetic data/synthetic`` (or :func:`generate`).
"""
import argparse
import json
import os
import os.path as osp

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CLASSES = ('circle', 'square', 'triangle')
SPLITS = {'training': (160, 0), 'validation': (40, 1)}  # images, seed offset
SIZE = 128


def _texture(rng, h, w, colour):
    """An (h, w, 3) uint8 fill: solid, stripes, checker or noise around ``colour``."""
    kind = rng.integers(4)
    yy, xx = np.mgrid[:h, :w]
    base = np.broadcast_to(np.asarray(colour, np.float32), (h, w, 3)).copy()
    if kind == 1:
        period = rng.integers(4, 10)
        angle = rng.uniform(0, np.pi)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) // period % 2
        base *= (0.6 + 0.4 * phase)[..., None]
    elif kind == 2:
        cell = rng.integers(4, 9)
        base *= (0.65 + 0.35 * ((yy // cell + xx // cell) % 2))[..., None]
    elif kind == 3:
        base += rng.normal(0, 25, (h, w, 1))
    return np.clip(base, 0, 255).astype(np.uint8)


def _background(rng):
    kind = rng.integers(3)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, SIZE, dtype=np.float32)
    if kind == 0:  # linear gradient along a random axis
        ramp = t[None, :] if rng.integers(2) else t[:, None]
        img = c0 + (c1 - c0) * np.broadcast_to(ramp, (SIZE, SIZE))[..., None]
    elif kind == 1:
        img = _texture(rng, SIZE, SIZE, c0).astype(np.float32)
    else:
        img = c0 + rng.normal(0, 30, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng, label):
    """Boolean (SIZE, SIZE) mask of one shape of class ``label``."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    r = int(rng.integers(12, 28))
    cx, cy = (int(v) for v in rng.integers(r // 2, SIZE - r // 2, 2))
    if CLASSES[label] == 'circle':
        cv2.circle(mask, (cx, cy), r, 1, -1)
    else:
        corners = 4 if CLASSES[label] == 'square' else 3
        angle0 = rng.uniform(0, 2 * np.pi)
        angles = angle0 + 2 * np.pi * np.arange(corners) / corners
        pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def make_image(rng):
    """One image and its visible instances [(label, mask)], drawn back to front."""
    img = _background(rng)
    instances = []
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(rng, label)
        colour = rng.integers(0, 256, 3)
        img[mask] = _texture(rng, SIZE, SIZE, colour)[mask]
        instances = [(lab, m & ~mask) for lab, m in instances]  # occlusion by the new shape
        instances.append((label, mask))
    kept = [(lab, m) for lab, m in instances if m.sum() >= 40]  # drop mostly hidden shapes
    return img, kept


def generate(root, force=False):
    """Write the dataset under ``root`` (skipped when it already exists). Returns ``root``."""
    stamp = osp.join(root, 'DONE')
    if osp.exists(stamp) and not force:
        return root
    for split, (count, offset) in SPLITS.items():
        rng = np.random.default_rng(2026 + offset)
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            name = f'{split}_{index:04d}'
            img, instances = make_image(rng)
            cv2.imwrite(osp.join(root, 'images', split, name + '.jpg'), img[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            semantic = np.zeros((SIZE, SIZE), np.uint8)
            for label, mask in instances:
                semantic[mask] = label + 1
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=index + 1, category_id=label + 1,
                    segmentation=dict(size=rle['size'], counts=rle['counts'].decode()),
                    area=float(mask.sum()), bbox=[x, y, w, h], iscrowd=0))
            cv2.imwrite(osp.join(root, 'annotations', split, name + '.png'), semantic)
            images.append(dict(id=index + 1, file_name=name + '.jpg', height=SIZE, width=SIZE))
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)])
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(coco, f)
    open(stamp, 'w').close()
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', nargs='?', default='data/synthetic')
    parser.add_argument('--force', action='store_true', help='rewrite an existing dataset')
    args = parser.parse_args()
    generate(args.root, args.force)
    print(f'synthetic dataset ready in {args.root}')


if __name__ == '__main__':
    main()
