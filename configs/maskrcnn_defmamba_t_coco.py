# Mask R-CNN 1x, DefMamba-T (the S recipe; the official repository ships only S).
_base_ = ['./maskrcnn_defmamba_s_coco.py']
pretrained = 'checkpoints/defmamba_t_in1k.pth'
model = dict(backbone=dict(arch='tiny', init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[48, 96, 192, 384]))
