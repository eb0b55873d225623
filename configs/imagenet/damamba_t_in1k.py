# DAMamba-T on ImageNet-1k: the S recipe with damamba_tiny.yaml (dims 80-160-320-512, depths
# 3-4-12-5, drop path 0.15).
_base_ = ['./damamba_s_in1k.py']
model = dict(backbone=dict(arch='tiny', drop_path_rate=0.15), head=dict(in_channels=512))
