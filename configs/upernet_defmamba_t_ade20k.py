# UperNet 160k ADE20K, DefMamba-T (the S recipe; the official repository ships only S).
_base_ = ['./upernet_defmamba_s_ade20k.py']
pretrained = 'checkpoints/defmamba_t_in1k.pth'
model = dict(backbone=dict(arch='tiny', init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[48, 96, 192, 384]), auxiliary_head=dict(in_channels=192))
