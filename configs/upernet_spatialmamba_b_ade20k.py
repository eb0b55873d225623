# UperNet 160k ADE20K, Spatial-Mamba-B: the official recipe
# (upernet_spatialmamba_4xb4-160k_ade20k-512x512_base.py) = the T config with the B backbone,
# drop path 0.5.
_base_ = ['./upernet_spatialmamba_t_ade20k.py']
pretrained = 'checkpoints/spatialmamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.5, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[96, 192, 384, 768]), auxiliary_head=dict(in_channels=384))
