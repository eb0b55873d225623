# DefMamba ablation, FB-BB + continuous scanning (PlainMamba's) as the third direction
# (paper: 77.3).
_base_ = ['../imagenet/defmamba_t_in1k.py']
model = dict(backbone=dict(directions=('forward', 'backward', 'continuous')))
