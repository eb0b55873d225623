"""Convert an official Spatial-Mamba checkpoint into an mmdefscan checkpoint.

    python tools/model_converters/spatialmamba2mmdefscan.py SRC DST [--arch tiny|small|base] [--ema]
                                                       [--classifier]

SRC may be an ImageNet training state of the official classification script (weights under
'model', EMA copy under 'model_ema' with --ema, pickled config objects read safely), a flat state
dict, or an official Mask R-CNN / UperNet checkpoint ('state_dict' with 'backbone.' keys). DST
loads with init_cfg=dict(type='Pretrained', checkpoint=DST): the head is dropped, missing output
norms are added at their init values, and the variant (inferred from the keys, or --arch) is built
and loaded strictly before DST is written. --classifier writes the mmpretrain ImageClassifier
layout of configs/imagenet/ instead. Logic and details: mmdefscan/models/converters.py.
"""
from mmdefscan.models.converters import main

if __name__ == '__main__':
    main('spatialmamba')
