# ImageNet-1k pre-training of DAMamba-S, the official recipe (DAMamba:classification/main.py with
# configs/DAMamba/damamba_small.yaml and config.py), in _base_/imagenet_official_300e.py.
# Not reproduced: the MESA self-distillation term (TRAIN.MESA 1.0 / 1.5 / 2.0 for T / S / B).
_base_ = ['../_base_/imagenet_official_300e.py']

# The official classifier ends its last stage with LayerNorm norm4 (part of the backbone, which
# returns it), averages over the map and applies head.fc (backbone.* + head.fc.*, key for key).
model = dict(
    # classification uses plain BatchNorm (the downstream copies use SyncBN); drop path of the
    # ImageNet yaml files: T 0.15, S 0.4, B 0.5
    backbone=dict(type='mmdefscan.DAMamba', arch='small', drop_path_rate=0.4,
                  norm_cfg=dict(type='BN')),
    head=dict(in_channels=512),
    # the official classification init: Conv2d and Linear trunc_normal(0.02) / 0, LayerNorm 1 / 0
    init_cfg=[dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=0.02, bias=0.0),
              dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)])
