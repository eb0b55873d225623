# Mask R-CNN 3x multi-scale (480-800 with crops, 36 epochs), DefMamba-T: the S 3x config with the
# T backbone.
_base_ = ['./maskrcnn_defmamba_s_coco_3x.py']
pretrained = 'checkpoints/defmamba_t_in1k.pth'
model = dict(backbone=dict(arch='tiny', init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[48, 96, 192, 384]))
