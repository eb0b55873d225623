# Mask R-CNN 3x multi-scale (480-800 with crops, 36 epochs), DAMamba-T: the official recipe
# (DAMamba:detection/maskrcnn/configs/mask_rcnn_DAMamba_tiny_fpn_3x.py, mmdet 2.x AutoAugment) in
# mmdet 3 terms, on mmdet's Swin-T ms-crop-3x config (same pipeline, AdamW lr 1e-4 wd 0.05, steps
# 27/33): 2 img/GPU x 8.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
          './_base_/tta_maskrcnn_coco.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)
pretrained = 'checkpoints/damamba_t_in1k.pth'
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.DAMamba', arch='tiny', drop_path_rate=0.3,
                  norm_cfg=dict(type='SyncBN', requires_grad=True),  # official: hard-coded SyncBN
                  out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[80, 160, 320, 512]))

# official: fp16 mixed precision (Fp16OptimizerHook, dynamic loss scale; Swin config: fp32), AdamW
# lr 1e-4 wd 0.05 with DAMamba's no-decay keys (only 'norm' names parameters)
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper', dtype='float16', loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'query_embedding': dict(decay_mult=0.),
                                    'relative_pos_bias_local': dict(decay_mult=0.),
                                    'cpb': dict(decay_mult=0.),
                                    'temperature': dict(decay_mult=0.),
                                    'norm': dict(decay_mult=0.)}))
# official: 500-iteration linear warm-up (Swin config: 1000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)]
