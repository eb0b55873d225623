# ImageNet-1k pre-training of Spatial-Mamba-S, the official recipe (Spatial-Mamba:classification/
# main.py with configs/spatialmamba/spatialmamba_small.yaml), in _base_/imagenet_official_300e.py.
# Not reproduced: the MESA self-distillation term the official script adds from 25% of training
# (TRAIN.MESA 1.0 / 1.5 / 2.0 for T / S / B), which has no mmpretrain counterpart.
_base_ = ['../_base_/imagenet_official_300e.py']

# The official classifier flattens the last stage, applies LayerNorm (norm), averages the tokens
# and applies Linear (head): the backbone's output LayerNorm outnorm3 is that norm;
# `spatialmamba2mmdefscan.py --classifier` maps norm -> backbone.outnorm3 and head -> head.fc.
model = dict(backbone=dict(type='mmdefscan.SpatialMamba', arch='small', drop_path_rate=0.3),
             head=dict(in_channels=512))
