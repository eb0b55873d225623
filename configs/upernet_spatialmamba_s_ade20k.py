# UperNet 160k ADE20K, Spatial-Mamba-S: the official recipe
# (upernet_spatialmamba_4xb4-160k_ade20k-512x512_small.py) = the T config with the S backbone,
# drop path 0.3 (same heads: S has T's widths).
_base_ = ['./upernet_spatialmamba_t_ade20k.py']
pretrained = 'checkpoints/spatialmamba_s_in1k.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
