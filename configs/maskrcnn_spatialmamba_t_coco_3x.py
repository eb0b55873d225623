# Mask R-CNN 3x multi-scale (480-800 with crops, 36 epochs), Spatial-Mamba-T: the official recipe
# (Spatial-Mamba:detection/configs/spatialmamba/mask_rcnn_spatialmamba_fpn_coco_tiny_3x.py), i.e.
# mmdet's Swin-T ms-crop-3x config with the backbone swapped: AdamW lr 1e-4 wd 0.05, 1000-iter
# warm-up, steps 27/33, 2 img/GPU x 8, fp32.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
          './_base_/tta_maskrcnn_coco.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)
pretrained = 'checkpoints/spatialmamba_t_in1k.pth'
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.SpatialMamba', arch='tiny', drop_path_rate=0.2,
                  out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
