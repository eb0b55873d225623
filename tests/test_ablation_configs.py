"""configs/ablations/: every config builds the switched DefMamba it names, through its own scope,
and takes one training step on tiny synthetic input (one block per stage: the switches are per
block); docs/ablations.md lists every config."""
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmdefscan  # noqa: F401  (before mmpretrain: torchvision stand-in where it is missing)
from _refs import REPO

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / 'configs/ablations').glob('*.py'))
SIZE = 64


def synthetic_samples(scope, count=2):
    """Data samples with random ground truth of each task, for SIZE x SIZE inputs."""
    meta = dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), pad_shape=(SIZE, SIZE),
                batch_input_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0))
    samples = []
    for i in range(count):
        if scope == 'mmpretrain':
            from mmpretrain.structures import DataSample
            samples.append(DataSample().set_gt_label(3 * i))
        elif scope == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            masks = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
            masks[0, 8:40, 12:50] = 1
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=torch.tensor([[12.0, 8.0, 50.0, 40.0]]), labels=torch.tensor([i]),
                masks=BitmapMasks(masks.numpy(), SIZE, SIZE))
            samples.append(sample)
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, SIZE, SIZE)))
            samples.append(sample)
    return samples


@pytest.mark.parametrize('path', CONFIGS)
def test_ablation_config_builds_and_trains_a_step(path):
    cfg = Config.fromfile(str(REPO / path))
    backbone = cfg.model.backbone
    assert backbone.type == 'mmdefscan.DefMamba' and backbone.arch == 'tiny'
    scope = cfg.default_scope
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    cfg.model.backbone.update(depths=[1, 1, 1, 1], cuda_graph=False, init_cfg=None)
    model = registry.build(cfg.model).train()
    op = model.backbone.layers[0].blocks[0].op
    assert op.directions == tuple(d for d in ('forward', 'backward', 'deformable', 'continuous',
                                               'local')
                                  if d in backbone.get('directions', ('forward', 'backward',
                                                                      'deformable')))
    if 'deformable' in op.directions:
        switches = dict(deformable_points=op.DS.points, deformable_tokens=op.DS.tokens,
                        offset_bias=op.DS.rpe_table is not None,
                        channel_attention=getattr(op.DS.conv_offset, 'ca', None) is not None)
        assert switches == {k: backbone.get(k, True) for k in switches}
    inputs = torch.randn(2, 3, SIZE, SIZE)
    loss, _ = model.parse_losses(model.loss(inputs, synthetic_samples(scope)))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.patch_embed[0].weight.grad.abs().sum() > 0


def test_the_ablation_table_lists_every_config():
    text = (REPO / 'docs/ablations.md').read_text()
    listed = set(re.findall(r'\]\(\.\./(configs/ablations/[\w.]+\.py)\)', text))
    assert listed == set(CONFIGS)
