# ImageNet-1k pre-training of DefMamba-S, the official recipe (DefMamba:classification/main.py with
# configs/defm/defm_small_224.yaml), in _base_/imagenet_official_300e.py, with bilinear resizing.
_base_ = ['../_base_/imagenet_official_300e.py']

# The official classifier is stages -> LayerNorm (classifier.norm) -> average pool -> Linear
# (classifier.head): the backbone's output LayerNorm outnorm3 is that final norm, and
# `defmamba2mmdefscan.py --classifier` turns an official checkpoint into this layout
# (classifier.norm -> backbone.outnorm3, classifier.head -> head.fc).
model = dict(backbone=dict(type='mmdefscan.DefMamba', arch='small', drop_path_rate=0.2),
             head=dict(in_channels=768))

# DefMamba's data settings interpolate bilinearly (DATA.INTERPOLATION 'bilinear'), otherwise the
# Swin / timm pipeline of the base: RandomResizedCrop, flip, RandAugment, random erasing 0.25.
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bilinear')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
