# UperNet + DefMamba-T trained from scratch on the embedded synthetic shapes (semantic labels).
_base_ = ['mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/default_runtime.py',
          '../_base_/datasets/synthetic_semantic.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    pretrained=None,  # the base model points at ImageNet ResNet weights
    backbone=dict(_delete_=True, type='mmdefscan.DefMamba', arch='tiny', drop_path_rate=0.1),
    decode_head=dict(in_channels=[48, 96, 192, 384], channels=128, num_classes=4,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=4, norm_cfg=norm_cfg))

max_iters = 200
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01),
                     paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=20, end=max_iters),
]
default_hooks = dict(  # mmseg keeps these in its schedule files, which the demo does not use
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
log_processor = dict(by_epoch=False)
