# DefMamba ablation, FB-BB + the deformable branch without deformable points, deformable tokens,
# offset bias and channel attention: the third scan reads the reference points in raster order
# (paper: 77.0).
_base_ = ['../imagenet/defmamba_t_in1k.py']
model = dict(backbone=dict(deformable_points=False, deformable_tokens=False, offset_bias=False,
                           channel_attention=False))
