"""Where the learned scans of a backbone read: image-space points and token order.

DefMamba's deformable scan reads every token at a predicted point and scans the tokens in a
predicted order; DAMamba's dynamic adaptive scan reads token (i, j) of its raster sequence at
(i + dy, j + dx). :func:`record_scan_paths` runs one image through a backbone and returns, for
every such module, the points in the image's pixel coordinates and (DefMamba) the rank of every
token in the scan order. Spatial-Mamba's state fusion has no learned path (a fixed dilated
neighbourhood) and is not covered. Used by ``tools/visualize_scan.py``.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..ops import DeformableScan, DynamicAdaptiveScan


@dataclass
class ScanPath:
    """One scan module's path for the first image of the batch.

    name: the module's name in the backbone. ``stride``: image pixels per map pixel (y, x).
    ``reference``, ``points``: (H, W, 2) image coordinates (x, y) of each token's own pixel centre
    and of the point it is read at (DAMamba: its first group). ``rank``: (H, W) position of each
    token in the scan order, or None for raster order.
    """
    name: str
    stride: tuple
    reference: torch.Tensor
    points: torch.Tensor
    rank: Optional[torch.Tensor] = None


def image_scale(stride):
    """Image pixels per map pixel as (x, y), for points stored as (x, y); ``stride`` is (y, x)."""
    return torch.tensor([stride[1], stride[0]], dtype=torch.float64)


def _pixel_centres(height, width, stride):
    """(H, W, 2) image coordinates (x, y) of the map's pixel centres."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * stride[0]
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * stride[1]
    return torch.stack(torch.meshgrid(xs, ys, indexing='xy'), -1)


def _deformable_path(name, module, x, stride):
    pos, keys = module.points_and_keys(x[:1])
    height, width = x.shape[2:]
    # grid_sample(align_corners=True) puts -1 / 1 on the first / last pixel centre
    sides = torch.tensor([max(width - 1, 1), max(height - 1, 1)], dtype=torch.float64)
    pixel = (pos[0].double().cpu() + 1) / 2 * sides  # map pixel index (x, y)
    order = torch.argsort(keys[0].cpu(), stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
    return ScanPath(name, stride, _pixel_centres(height, width, stride),
                    (pixel + 0.5) * image_scale(stride),
                    rank.view(height, width))


def _adaptive_path(name, module, z, stride):
    offsets = module.predict_offsets(z[:1])[0, ..., :2].double().cpu()  # group 0: (dx, dy)
    height, width = z.shape[2:]
    reference = _pixel_centres(height, width, stride)
    return ScanPath(name, stride, reference, reference + offsets * image_scale(stride))


def record_module_inputs(backbone, image, types):
    """Run ``image`` through ``backbone`` in eval mode without gradients; the first input of
    every module of one of ``types``, as (name, module, input), in forward order. ValueError if
    the backbone has no such module."""
    inputs = []

    def keep(name):
        return lambda module, args: inputs.append((name, module, args[0]))
    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in backbone.named_modules()
             if isinstance(m, types)]
    if not hooks:
        raise ValueError(f'{type(backbone).__name__} has no '
                         f'{" or ".join(t.__name__ for t in types)} module')
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(image)
    finally:
        for hook in hooks:
            hook.remove()
        backbone.train(was_training)
    return inputs


def map_stride(image_size, map_size):
    """Image pixels per map pixel, as (y, x), from the (H, W) of each."""
    return (image_size[0] / map_size[0], image_size[1] / map_size[1])


def check_learned_path(backbone):
    """ValueError unless ``backbone`` has a scan whose path is learned (DefMamba, DAMamba)."""
    if not any(isinstance(m, (DeformableScan, DynamicAdaptiveScan)) for m in backbone.modules()):
        raise ValueError(f'{type(backbone).__name__} has no learned scan path (DefMamba\'s '
                         'deformable scan or DAMamba\'s dynamic adaptive scan)')


@torch.no_grad()
def record_scan_paths(backbone, image):
    """Run ``image`` (1, 3, H, W), normalised as the backbone expects, through ``backbone`` in
    eval mode; the :class:`ScanPath` of every deformable / adaptive scan, in forward order."""
    check_learned_path(backbone)
    inputs = record_module_inputs(backbone, image, (DeformableScan, DynamicAdaptiveScan))
    paths = []
    for name, module, x in inputs:
        path = _deformable_path if isinstance(module, DeformableScan) else _adaptive_path
        paths.append(path(name, module, x, map_stride(image.shape[2:], x.shape[2:])))
    return paths
