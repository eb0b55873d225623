"""Every config under configs/ loads, builds through its own scope and runs one forward."""
import copy
import functools
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from _refs import REPO

# configs/imagenet/ (mmpretrain classifiers) are built and stepped in test_imagenet_configs.py,
# configs/ablations/ in test_ablation_configs.py
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / 'configs').rglob('*.py')
                 if not {'_base_', 'imagenet', 'ablations'} & set(p.parts))


@functools.lru_cache(maxsize=None)
def _loaded(path):
    return Config.fromfile(str(REPO / path))


def load(path):
    """The config, parsed once per session (the tests below read each several times)."""
    return copy.deepcopy(_loaded(path))


def test_every_model_family_has_configs():
    names = [Path(c).name for c in CONFIGS]
    for family in ('defmamba', 'spatialmamba', 'damamba'):
        for variant in 'tsb':
            for kind in (f'maskrcnn_{family}_{variant}_coco.py', f'maskrcnn_{family}_{variant}_coco_3x.py',
                         f'upernet_{family}_{variant}_ade20k.py'):
                assert kind in names, kind


def test_the_single_scale_recipes_of_defmamba_and_spatialmamba_train_from_cuda_graphs():
    """Which configs switch cuda_graph on: the UperNet (one crop shape) and Mask R-CNN 1x (one
    resize, a few padded shapes) configs of DefMamba and Spatial-Mamba. The 3x multi-scale
    configs (many shapes) and DAMamba's (SyncBN under several processes runs eagerly anyway)
    stay eager. (The ImageNet configs are checked in test_imagenet_configs.py.)"""
    graphed = {Path(c).name for c in CONFIGS
               if load(c).model.backbone.get('cuda_graph')}
    assert graphed == {f'{kind}_{family}_{variant}_{data}.py' for family in ('defmamba',
                                                                             'spatialmamba')
                       for variant in 'tsb'
                       for kind, data in (('maskrcnn', 'coco'), ('upernet', 'ade20k'))}


def model_without_graphs(path):
    model = load(path).model.to_dict()
    model['backbone'].pop('cuda_graph', None)
    return model


def test_each_3x_config_has_the_model_of_its_1x_config():
    """So the 1x configs' build-and-forward test below covers the 3x ones (the CUDA graph
    option aside: on CPU the backbone runs eagerly with or without it)."""
    three_x = [c for c in CONFIGS if c.endswith('_3x.py')]
    assert len(three_x) == 9
    for path in three_x:
        assert model_without_graphs(path) == model_without_graphs(path.replace('_3x.py', '.py'))


@pytest.mark.parametrize('path', [c for c in CONFIGS if not c.endswith('_3x.py')])
def test_config_builds_and_forwards(path):
    cfg = load(path)
    scope = cfg.default_scope
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model).eval()
    assert 'mmdefscan' in type(model.backbone).__module__
    if 'init_cfg' in cfg.model.backbone and 'demo' not in path:
        assert cfg.model.backbone.init_cfg.type == 'Pretrained'  # real recipes start from ImageNet
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        if scope == 'mmdet':
            from mmdet.structures import DetDataSample
            meta = dict(img_shape=(64, 96), ori_shape=(64, 96), pad_shape=(64, 96),
                        batch_input_shape=(64, 96), scale_factor=(1.0, 1.0))
            preds = model.predict(x, [DetDataSample(metainfo=meta)])
            assert {'bboxes', 'scores', 'labels', 'masks'} <= set(preds[0].pred_instances.keys())
        else:
            from mmseg.structures import SegDataSample
            meta = dict(img_shape=(64, 96), ori_shape=(64, 96), pad_shape=(64, 96))
            preds = model.predict(x, [SegDataSample(metainfo=meta)])
            assert preds[0].pred_sem_seg.data.shape == (1, 64, 96)


@pytest.mark.parametrize('path, mode, views', [('configs/upernet_damamba_s_ade20k.py', 'whole', 12),
                                              ('configs/upernet_defmamba_s_ade20k.py', 'whole', 12),
                                              ('configs/maskrcnn_defmamba_s_coco.py', None, 6)])
def test_tta_wraps_the_model_and_pipeline(path, mode, views):
    from mmdefscan.engine import enable_tta, load_config
    cfg = load_config(str(REPO / path))
    slide = cfg.model.get('test_cfg', {}).get('mode')
    enable_tta(cfg)
    assert cfg.model.type in ('SegTTAModel', 'mmdefscan.DetMaskTTAModel')
    transforms = cfg.test_dataloader.dataset.pipeline[1]['transforms']
    assert len(transforms[0]) * len(transforms[1]) == views  # scales x flips
    if mode:  # DAMamba tests single-scale by sliding windows, multi-scale on whole images
        assert cfg.model.module.test_cfg['mode'] == mode
        assert slide in ('slide', 'whole')
