"""Official backbone dicts inside the official configs' real structure: the DefMamba and
Spatial-Mamba det / seg configs inherit mmdet's Swin-T Mask R-CNN and mmseg's Swin-T UperNet,
whose backbone keys and ``init_cfg`` (the Swin-T checkpoint) merge into the dict. ``pretrained=``
decides the weights, as in the official backbones; what is ignored is named in one log line; a
segmentor-level ``pretrained`` of another model never reaches our backbone silently."""
import logging
import uuid

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

from mmdefscan.models.backbones import DefMamba, SpatialMamba

DEFMAMBA = dict(dims=[16, 32, 48, 64], depths=(1, 1, 1, 1), ssm_d_state=16, ssm_ratio=1.0,
                mlp_ratio=4.0, drop_path_rate=0.2, out_indices=(0, 1, 2, 3))
SPATIALMAMBA = dict(dims=16, d_state=1, depths=(1, 1, 1, 1), drop_path_rate=0.2,
                    out_indices=(0, 1, 2, 3))
SWIN_T_DET = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
SWIN_T_SEG = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
R50_SEG = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'


@pytest.fixture
def log():
    """The messages logged through MMEngine's current logger during the test."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_instance(f'test_official_dicts_{uuid.uuid4().hex}')
    logger.addHandler(handler)
    yield lambda: [r.getMessage() for r in records]
    logger.removeHandler(handler)


def checkpoint(tmp_path, cls, kwargs):
    """A strict checkpoint of a backbone of ``cls(**kwargs)`` (random weights) and its state."""
    state = cls(**kwargs).state_dict()
    path = tmp_path / f'{cls.__name__}.pth'
    torch.save({'model': state}, path)
    return str(path), state


def build(tmp_path, text, scope):
    config = tmp_path / 'official.py'
    config.write_text("custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)\n"
                      + text)
    cfg = Config.fromfile(str(config))
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return cfg, registry.build(cfg.model)


def assert_loaded(backbone, state):
    backbone.init_weights()
    for key, value in state.items():
        assert torch.equal(backbone.state_dict()[key], value), key


@pytest.mark.parametrize('with_pretrained', [True, False])
def test_official_defmamba_detection_dict_in_swin_t_mask_rcnn(tmp_path, log, with_pretrained):
    path, state = checkpoint(tmp_path, DefMamba, DEFMAMBA)
    backbone = dict(DEFMAMBA, type='DefMamba', pretrained=path if with_pretrained else None)
    cfg, model = build(tmp_path, f"_base_ = ['{SWIN_T_DET}']\n"
                                 f'model = dict(backbone={backbone!r}, '
                                 'neck=dict(in_channels=[16, 32, 48, 64]))\n', 'mmdet')
    swin_init = cfg.model.backbone.init_cfg
    assert swin_init.type == 'Pretrained' and 'swin_tiny' in swin_init.checkpoint
    ignored = [m for m in log() if m.startswith('DefMamba: ignoring init_cfg=')]
    assert ignored == [f'DefMamba: ignoring init_cfg={dict(swin_init)}: the official '
                       f"pretrained= decides the weights ({backbone['pretrained']!r})"]
    if with_pretrained:
        assert model.backbone.init_cfg == dict(type='Pretrained', checkpoint=path)
        assert_loaded(model.backbone, state)
    else:  # the official backbone then starts from random weights, and so does ours
        assert model.backbone.init_cfg is None


def test_official_spatialmamba_segmentation_dict_in_swin_t_upernet(tmp_path, log):
    path, state = checkpoint(tmp_path, SpatialMamba, SPATIALMAMBA)
    backbone = dict(SPATIALMAMBA, type='SpatialMamba', pretrained=path)
    cfg, model = build(tmp_path, f"_base_ = ['{SWIN_T_SEG}']\n"
                                 f'model = dict(backbone={backbone!r}, '
                                 'decode_head=dict(in_channels=[16, 32, 64, 128]), '
                                 'auxiliary_head=dict(in_channels=64))\n', 'mmseg')
    swin_init = cfg.model.backbone.init_cfg
    assert 'swin_tiny' in swin_init.checkpoint
    assert f'SpatialMamba: ignoring init_cfg={dict(swin_init)}: the official pretrained= ' \
           f'decides the weights ({path!r})' in log()
    assert model.backbone.init_cfg == dict(type='Pretrained', checkpoint=path)
    assert_loaded(model.backbone, state)


@pytest.mark.parametrize('with_init_cfg', [True, False])
def test_a_segmentor_level_pretrained_of_another_model_is_not_loaded(tmp_path, log,
                                                                     with_init_cfg):
    """mmseg's stock UperNet sets model.pretrained='open-mmlab://resnet50_v1c', which its
    EncoderDecoder hands to the backbone: ignored with a warning; our init_cfg stays."""
    path, state = checkpoint(tmp_path, DefMamba, DEFMAMBA)
    backbone = dict(DEFMAMBA, _delete_=True, type='DefMamba')
    if with_init_cfg:
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=path)
    cfg, model = build(tmp_path, f"_base_ = ['{R50_SEG}']\n"
                                 f'model = dict(backbone={backbone!r}, '
                                 'decode_head=dict(in_channels=[16, 32, 48, 64]), '
                                 'auxiliary_head=dict(in_channels=48))\n', 'mmseg')
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    assert "DefMamba: ignoring pretrained='open-mmlab://resnet50_v1c': a model-zoo checkpoint " \
           'of another model (an mmseg segmentor passes its own pretrained= to the backbone; ' \
           'set model.pretrained=None)' in log()
    if with_init_cfg:
        assert model.backbone.init_cfg == backbone['init_cfg']
        assert_loaded(model.backbone, state)
    else:
        assert model.backbone.init_cfg is None
