# Mask R-CNN 3x, DAMamba-B: the official recipe (mask_rcnn_DAMamba_base_fpn_3x.py) = the S 3x
# config (1 img/GPU) with the B backbone (drop path 0.6).
_base_ = ['./maskrcnn_damamba_s_coco_3x.py']
pretrained = 'checkpoints/damamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[112, 224, 448, 640]))
