# DefMamba ablation, DB only: the deformable scan alone (paper: 76.5).
_base_ = ['../imagenet/defmamba_t_in1k.py']
model = dict(backbone=dict(directions=('deformable', )))
