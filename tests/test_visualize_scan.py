"""Scan paths (mmdefscan/models/scan_paths.py) and tools/visualize_scan.py."""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import mmdefscan  # noqa: F401
from _refs import REPO
from mmdefscan.models.scan_paths import record_scan_paths
from mmdefscan.ops import DeformableScan, DynamicAdaptiveScan
from mmdefscan.registry import MODELS

TINY = dict(dims=[16, 32, 32, 32], depths=[1, 1, 1, 1])
DEMO = 'configs/demo/maskrcnn_{}_t_synthetic.py'


def zero_offsets(backbone):
    """Every learned offset (DefMamba: points and order; DAMamba: points) becomes 0."""
    for module in backbone.modules():
        if isinstance(module, DeformableScan):
            module.conv_offset.conv2.weight.data.zero_()
        elif isinstance(module, DynamicAdaptiveScan):
            module.offset.weight.data.zero_()
            module.offset.bias.data.zero_()
    return backbone


def test_zero_offsets_read_the_official_reference_grid_in_raster_order():
    """DefMamba's reference grid is the official one, half a pixel past each pixel centre;
    DAMamba's is the pixel centres; with zero offsets both scan in raster order."""
    image = torch.randn(1, 3, 64, 96)
    defmamba = zero_offsets(MODELS.build(dict(type='DefMamba', **TINY)))
    paths = record_scan_paths(defmamba, image)
    assert [p.name for p in paths] == [f'layers.{i}.blocks.0.op.DS' for i in range(4)]
    for path, side in zip(paths, (16, 8, 4, 2)):
        assert path.stride == (64 / side, 96 / (side * 3 // 2)) and path.reference.shape[:2] == (
            side, side * 3 // 2)
        half_pixel = torch.tensor([path.stride[1], path.stride[0]], dtype=torch.float64) / 2
        # the points come from float32 normalised coordinates: 1e-4 image pixels
        torch.testing.assert_close(path.points, path.reference + half_pixel, rtol=0, atol=1e-4)
        assert torch.equal(path.rank.flatten(), torch.arange(path.rank.numel()))
    damamba = zero_offsets(MODELS.build(dict(type='DAMamba', **TINY, head_dim=16,
                                             norm_cfg=dict(type='BN'))))
    paths = record_scan_paths(damamba, image)
    assert paths and all(p.rank is None for p in paths)
    for path in paths:
        torch.testing.assert_close(path.points, path.reference, rtol=0, atol=1e-4)


def test_points_and_order_map_to_image_pixels():
    """Known points and keys in, image coordinates and ranks out: DefMamba's points normalised
    with align_corners=True, its order from the keys; DAMamba's group-0 offsets in map pixels."""
    image = torch.randn(1, 3, 64, 64)
    defmamba = MODELS.build(dict(type='DefMamba', **TINY)).train()
    scan = defmamba.layers[0].blocks[0].op.DS
    length = 16 * 16

    def corner_and_reversed(x):  # every token reads the top-left pixel, last token first
        pos = torch.full((x.shape[0], 16, 16, 2), -1.0)
        keys = -torch.arange(length, dtype=torch.float32).expand(x.shape[0], length)
        return pos, keys
    scan.points_and_keys = corner_and_reversed
    path = record_scan_paths(defmamba, image)[0]
    assert defmamba.training  # the backbone's mode is given back
    torch.testing.assert_close(path.points, torch.full((16, 16, 2), 2.0, dtype=torch.float64))
    assert torch.equal(path.rank.flatten(), torch.arange(length - 1, -1, -1))

    damamba = zero_offsets(MODELS.build(dict(type='DAMamba', **TINY, head_dim=16,
                                             norm_cfg=dict(type='BN'))))
    first = next(m for m in damamba.modules() if isinstance(m, DynamicAdaptiveScan))
    first.offset.bias.data[:2] = torch.tensor([1.0, -2.0])  # group 0: dx = 1, dy = -2
    path = record_scan_paths(damamba, image)[0]
    shift = torch.tensor([1.0 * path.stride[1], -2.0 * path.stride[0]], dtype=torch.float64)
    torch.testing.assert_close(path.points, path.reference + shift)


def test_a_backbone_without_a_learned_path_is_refused():
    with pytest.raises(ValueError, match='SpatialMamba has no learned scan path'):
        record_scan_paths(MODELS.build(dict(type='SpatialMamba', dims=[16, 32, 64, 128],
                                            depths=[1, 1, 1, 1])),
                          torch.randn(1, 3, 64, 64))


def run_tool(*args):
    return subprocess.run([sys.executable, 'tools/visualize_scan.py', *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))


def test_the_tool_draws_a_checkpoints_paths(tmp_path):
    """A detector checkpoint (keys under backbone.) with zero offsets: one points and one order
    image per DefMamba-T block at the resized image's size, and the table reads the official
    half-pixel shift (0.71 map pixels) and raster order."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(REPO / DEMO.format('defmamba')))
    backbone_cfg = dict(cfg.model.backbone, type='DefMamba')
    backbone = zero_offsets(MODELS.build(backbone_cfg))
    checkpoint = tmp_path / 'detector.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in backbone.state_dict().items()}},
               checkpoint)
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8))
    out = tmp_path / 'paths'
    result = run_tool(DEMO.format('defmamba'), image, '--checkpoint', checkpoint, '--size', 96,
                      '--out-dir', out, '--device', 'cpu')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r'^\| layers\.\S+ \| \S+ \| (.*) \|$', result.stdout, re.M)
    assert len(rows) == 11 and set(rows) == {'0.71 | 0.71 | 0.000'}, result.stdout
    drawn = sorted(p.name for p in out.iterdir())
    assert len(drawn) == 22 and drawn[0] == '00_layers_0_blocks_0_op_DS_order.png'
    assert all(cv2.imread(str(out / name)).shape == (96, 128, 3) for name in drawn)


def test_the_tool_refuses_a_backbone_without_a_learned_path_in_one_line(tmp_path):
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    result = run_tool(DEMO.format('spatialmamba'), image, '--size', 64, '--out-dir', tmp_path,
                      '--device', 'cpu')
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: ValueError: SpatialMamba has no learned scan path')
