# UperNet 160k ADE20K with DefMamba-T whose third scan is LocalMamba's local scan (7x7 windows)
# instead of the deformable one, from its ImageNet pre-training by ./defmamba_t_in1k_fbbb_local.py
# (the classifier's checkpoint, keys under backbone.).
_base_ = ['../upernet_defmamba_t_ade20k.py']
pretrained = 'work_dirs/defmamba_t_in1k_fbbb_local/epoch_300.pth'
model = dict(backbone=dict(directions=('forward', 'backward', 'local'), local_window=7,
                           init_cfg=dict(checkpoint=pretrained, prefix='backbone.')))
