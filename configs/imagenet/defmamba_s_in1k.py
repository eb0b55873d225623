# ImageNet-1k pre-training of DefMamba-S, the official recipe (DefMamba:classification/main.py with
# configs/defm/defm_small_224.yaml): 300 epochs with 20 warm-up, AdamW lr 5e-4 x total
# batch / 512 = 1e-3 for the official 8 GPUs x 128 (auto_scale_lr rescales it for another total
# batch with --auto-scale-lr), warm-up from 1e-6, cosine per iteration to 1e-5, weight decay 0.05
# except norms, biases and 1-D parameters, label smoothing 0.1, RandAugment m9-mstd0.5-inc1,
# mixup 0.8 / cutmix 1.0, random erasing 0.25, EMA 0.9999, gradient clipping 5.0, AMP (CUDA; on
# CPU: tools/train.py --no-amp).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

# The official classifier is stages -> LayerNorm (classifier.norm) -> average pool -> Linear
# (classifier.head). Here the backbone returns its last stage through its output LayerNorm
# (outnorm3), which is that final norm, then GlobalAveragePooling and LinearClsHead (head.fc): the
# same function, and `defmamba2mmdefscan.py --classifier` turns an official checkpoint into this
# layout (classifier.norm -> backbone.outnorm3, classifier.head -> head.fc).
# cuda_graph: the training crops have one shape (and the last, smaller batch of an epoch a
# second), so the backbone's forward + backward replay from CUDA graphs, its eval forward too
# (docs/cuda_graph.md). --cfg-options model.backbone.cuda_graph=False turns it off.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='mmdefscan.DefMamba', arch='small', drop_path_rate=0.2, out_indices=(3, ),
                  cuda_graph=True),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=1000, in_channels=768, init_cfg=None,
              loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
              cal_acc=False),
    # the official model-level init, head included: Linear trunc_normal(0.02) / 0, LayerNorm 1 / 0
    init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.0),
              dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)],
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

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
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))  # x 8 GPUs
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic', clip_grad=dict(max_norm=5.0))
param_scheduler = [  # timm's cosine steps every iteration
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=1024)
# timm ModelEma (decay 0.9999, buffers averaged too), validated and saved beside the model
custom_hooks = [dict(type='EMAHook', momentum=1e-4, update_buffers=True, priority='ABOVE_NORMAL')]
