# Mask R-CNN 1x, DefMamba-B (the S recipe; the official repository ships only S). Deeper model:
# drop path 0.3 (S uses 0.2, B's ImageNet rate is 0.4).
_base_ = ['./maskrcnn_defmamba_s_coco.py']
pretrained = 'checkpoints/defmamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
