# Mask R-CNN 3x multi-scale (480-800 with crops, 36 epochs), DefMamba-T: mmdet's Swin-T
# ms-crop-3x recipe (AdamW lr 1e-4 wd 0.05, steps 27/33) with the 1x config's backbone.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
          './_base_/tta_maskrcnn_coco.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)
pretrained = 'checkpoints/defmamba_t_in1k.pth'
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.DefMamba', arch='tiny', drop_path_rate=0.2,
                  out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 384]))
