# Mask R-CNN 3x multi-scale (480-800 with crops, 36 epochs), DefMamba-B: the S 3x config with the
# B backbone of the 1x config (drop path 0.3).
_base_ = ['./maskrcnn_defmamba_s_coco_3x.py']
pretrained = 'checkpoints/defmamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
