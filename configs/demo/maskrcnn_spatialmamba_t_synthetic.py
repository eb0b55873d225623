# Mask R-CNN + Spatial-Mamba-T trained from scratch on the embedded synthetic shapes (as the
# DefMamba demo; run with tools/train.py after make demo has written data/synthetic).
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py',
          '../_base_/datasets/synthetic_instance.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.SpatialMamba', arch='tiny', drop_path_rate=0.1),
    neck=dict(in_channels=[64, 128, 256, 512]),
    rpn_head=dict(anchor_generator=dict(scales=[4])),  # objects are 12-56 px
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    # few objects per 128 px image: fewer proposals and sampled RoIs (CPU time)
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=10.0),
                     paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
