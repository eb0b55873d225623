# Mask R-CNN + DefMamba-T trained from scratch on the embedded synthetic shapes (make demo).
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py',
          '../_base_/datasets/synthetic_instance.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

width = 128  # FPN and head width (256 in the COCO configs): CPU time on 2 cores
# Trained from scratch: GroupNorm in the FPN and the RoI heads (as mmdet's from-scratch recipes)
# more than doubled the mAP reached in the same iterations (docs/demo.md).
norm = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.DefMamba', arch='tiny', drop_path_rate=0.0),
    neck=dict(in_channels=[48, 96, 192, 384], out_channels=width, norm_cfg=norm),
    rpn_head=dict(in_channels=width, feat_channels=width,
                  anchor_generator=dict(scales=[4])),  # objects are 24-56 px
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', in_channels=width, conv_out_channels=width,
                       fc_out_channels=512, num_classes=3, norm_cfg=norm),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=3, norm_cfg=norm)),
    # few objects per 128 px image: fewer proposals and sampled RoIs (CPU time)
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

max_iters = 500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.05),
                     clip_grad=dict(max_norm=10.0),
                     paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)  # the demo's figures are reproducible on one machine
