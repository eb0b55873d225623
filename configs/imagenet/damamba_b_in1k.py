# DAMamba-B on ImageNet-1k: the S recipe with damamba_base.yaml (dims 112-224-448-640, depths
# 4-8-25-8, drop path 0.5).
_base_ = ['./damamba_s_in1k.py']
model = dict(backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=640))
