# UperNet 160k ADE20K, DAMamba-S: the official recipe (upernet_DAMamba_small_512x512_160k_
# ade20k_ss.py / _ms.py) = the T config with the S backbone (drop path 0.4).
_base_ = ['./upernet_damamba_t_ade20k.py']
pretrained = 'checkpoints/damamba_s_in1k.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[96, 192, 384, 512]),
             auxiliary_head=dict(in_channels=384))
