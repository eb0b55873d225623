"""Without torchvision, mmpretrain still imports and builds a classifier on our backbone."""
import importlib.util
import sys

import pytest
import torch

import mmdefscan  # noqa: F401

stubbed = getattr(sys.modules.get('torchvision'), '__version__', '').endswith('mmdefscan.stub')


@pytest.mark.skipif(not stubbed, reason='a real torchvision is installed and used')
def test_stub_box_ops_and_clear_errors():
    from torchvision.ops import boxes
    a = torch.tensor([[0., 0., 2., 2.], [1., 1., 3., 3.]])
    iou = boxes.box_iou(a, a)
    torch.testing.assert_close(iou, torch.tensor([[1., 1 / 7], [1 / 7, 1.]]))
    giou = boxes.generalized_box_iou(a, a)
    torch.testing.assert_close(giou, torch.tensor([[1., 1 / 7 - 2 / 9], [1 / 7 - 2 / 9, 1.]]))
    import torchvision
    with pytest.raises(AttributeError, match='torchvision is not installed'):
        torchvision.models  # noqa: B018


def test_mmpretrain_classifier_builds_and_computes_a_loss():
    assert importlib.util.find_spec('mmpretrain') is not None
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='DefMamba', dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=64,
                  loss=dict(type='CrossEntropyLoss'))))
    from mmpretrain.structures import DataSample
    samples = [DataSample().set_gt_label(i) for i in (1, 3)]
    losses = model(torch.randn(2, 3, 64, 64), samples, mode='loss')
    assert torch.isfinite(losses['loss']) and losses['loss'] > 0


@pytest.mark.skipif(not stubbed, reason='a real torchvision is installed and used')
def test_mmpretrain_datasets_import_and_the_torchvision_crop_says_what_is_missing():
    """mmpretrain's transforms subclass torchvision's RandomResizedCrop at import: the stand-in
    lets them import, and building that crop raises one clear error."""
    from mmpretrain.datasets.transforms import MAERandomResizedCrop, RandomResizedCrop
    RandomResizedCrop(scale=32)  # mmpretrain's own crop, the ImageNet recipes' one
    with pytest.raises(ImportError, match='needs torchvision, which is not installed'):
        MAERandomResizedCrop(size=32)


@pytest.mark.parametrize('version,disabled', [('5.0.1', True), ('4.57.6', False)])
def test_mmpretrain_models_import_beside_transformers_5(version, disabled):
    """With transformers 5 (faked: its version as the package metadata reports it) mmpretrain's
    multimodal models are switched off before mmpretrain.models is imported, so the
    classification models import; with an older transformers the switch is left alone."""
    import subprocess
    code = f'''
import importlib.metadata
real = importlib.metadata.version
importlib.metadata.version = lambda name: {version!r} if name == 'transformers' else real(name)
import mmdefscan
from mmpretrain.utils import dependency
from mmdefscan.utils.mmpretrain_compat import disable_multimodal_if_incompatible
dependency.WITH_MULTIMODAL = 'as mmpretrain found it'
print(disable_multimodal_if_incompatible(), repr(dependency.WITH_MULTIMODAL))
import mmpretrain.models
from mmpretrain.registry import MODELS
assert MODELS.get('ImageClassifier') is not None
'''
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=300)
    if not disabled:  # mmpretrain then takes its own branch, which needs a real transformers
        assert result.stdout.splitlines()[-1] == "False 'as mmpretrain found it'"
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == 'True False'
