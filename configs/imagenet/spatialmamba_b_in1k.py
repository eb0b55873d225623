# Spatial-Mamba-B on ImageNet-1k: the S recipe with spatialmamba_base.yaml (dims 96, depths
# 2-4-21-5, drop path 0.5).
_base_ = ['./spatialmamba_s_in1k.py']
model = dict(backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=768))
