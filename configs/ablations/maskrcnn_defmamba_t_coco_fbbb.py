# Mask R-CNN 1x with the FB-BB-only DefMamba-T (forward and backward scans, no deformable branch),
# from its ImageNet pre-training by ./defmamba_t_in1k_fbbb.py (the classifier's checkpoint, keys
# under backbone.): does the deformable branch's ImageNet gain hold on COCO?
_base_ = ['../maskrcnn_defmamba_t_coco.py']
pretrained = 'work_dirs/defmamba_t_in1k_fbbb/epoch_300.pth'
model = dict(backbone=dict(directions=('forward', 'backward'),
                           init_cfg=dict(checkpoint=pretrained, prefix='backbone.')))
