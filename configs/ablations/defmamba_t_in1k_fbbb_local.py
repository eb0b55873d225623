# DefMamba ablation, FB-BB + local scanning (LocalMamba's, 7x7 windows) as the third direction
# (paper: 77.1).
_base_ = ['../imagenet/defmamba_t_in1k.py']
model = dict(backbone=dict(directions=('forward', 'backward', 'local'), local_window=7))
