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
