# DefMamba ablation, FB-BB only: forward and backward scans, no deformable branch (paper: 76.9).
_base_ = ['../imagenet/defmamba_t_in1k.py']
model = dict(backbone=dict(directions=('forward', 'backward')))
