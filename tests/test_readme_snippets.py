"""The README's configs for using a backbone from an existing mmdet / mmseg config, read from
README.md as shown there: each builds inside its stock config, loads its checkpoint strictly and
runs a loss step (at tiny width, from a local checkpoint)."""
import functools
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from _refs import REPO
from mmdefscan.models.backbones import DefMamba

TINY = dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])
# where each scope's config gives the backbone's widths (README value -> tiny value)
WIDTHS = {'mmdet': {'model.neck.in_channels': TINY['dims']},
          'mmseg': {'model.decode_head.in_channels': TINY['dims'],
                    'model.auxiliary_head.in_channels': TINY['dims'][2]}}


def batch(scope, height=96, width=128):
    """Two random images with one box and mask each (mmdet) or random class maps (mmseg)."""
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0))
    samples = []
    for _ in range(2):
        if scope == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            masks = torch.zeros(1, height, width, dtype=torch.bool)
            masks[0, 20:60, 30:90] = True
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=torch.tensor([[30., 20., 90., 60.]]), labels=torch.tensor([1]),
                masks=BitmapMasks(masks.numpy(), height, width))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, height, width)))
        samples.append(sample)
    return torch.randn(2, 3, height, width), samples


def readme_config(scope):
    """The README's one python block that starts from a stock ``scope`` config."""
    blocks = re.findall(r'^```python\n(.*?)^```', (REPO / 'README.md').read_text(), re.S | re.M)
    found = [b for b in blocks if b.startswith(f"_base_ = ['{scope}::")]
    assert len(found) == 1, f'README.md: {len(found)} python blocks with a {scope}:: base'
    return found[0]


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_readme_config_builds_in_its_stock_config_and_runs_a_loss_step(tmp_path, scope):
    (tmp_path / 'readme.py').write_text(readme_config(scope))
    cfg = Config.fromfile(str(tmp_path / 'readme.py'))
    backbone = cfg.model.backbone
    assert backbone.type == 'mmdefscan.DefMamba' and backbone.init_cfg.type == 'Pretrained'
    # the README's widths are those of its variant
    dims = DefMamba(arch=backbone.arch).dims
    readme_widths = {'model.neck.in_channels': dims, 'model.decode_head.in_channels': dims,
                     'model.auxiliary_head.in_channels': dims[2]}
    for key in WIDTHS[scope]:
        value = functools.reduce(lambda node, name: node[name], key.split('.'), cfg)
        value = list(value) if isinstance(value, (list, tuple)) else value
        assert value == readme_widths[key], key
    weights = DefMamba(**TINY).state_dict()
    torch.save({'state_dict': weights}, tmp_path / 'defmamba.pth')
    cfg.merge_from_dict({'model.backbone.init_cfg.checkpoint': str(tmp_path / 'defmamba.pth'),
                         **WIDTHS[scope]})
    cfg.model.backbone.arch = TINY
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)
    model.init_weights()
    for key, value in weights.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    x, samples = batch(scope)
    model.train()
    losses = model.loss(x, samples)
    loss, _ = model.parse_losses(losses)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.patch_embed[0].weight.grad.abs().sum() > 0
