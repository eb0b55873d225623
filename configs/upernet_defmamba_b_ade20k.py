# UperNet 160k ADE20K, DefMamba-B (the S recipe; the official repository ships only S), drop
# path 0.4 (B's ImageNet rate; S uses 0.3 here).
_base_ = ['./upernet_defmamba_s_ade20k.py']
pretrained = 'checkpoints/defmamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)))
