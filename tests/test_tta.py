"""Mask R-CNN TTA merges boxes AND masks; one identity view equals plain testing."""
import copy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from _refs import REPO
from mmdefscan.models.tta import DetMaskTTAModel

DET_CFG = REPO / 'configs/demo/maskrcnn_defmamba_t_synthetic.py'


@pytest.fixture(scope='module')
def demo(data_root):
    root = data_root.rstrip('/') + '/'
    cfg = Config.fromfile(str(DET_CFG))
    cfg.model.backbone.update(dims=[16, 32, 32, 32], depths=[1, 1, 1, 1])
    cfg.model.neck.in_channels = [16, 32, 32, 32]
    # fewer proposals and detections than the demo (CPU time): the views compare one to one
    cfg.model.test_cfg.rpn.max_per_img = 100
    cfg.model.test_cfg.rcnn.max_per_img = 20
    from mmdet.registry import DATASETS, MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):  # for this module's tests only
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).eval()

        def dataset(pipeline):
            ds = copy.deepcopy(cfg.test_dataloader.dataset)
            ds.update(data_root=root, pipeline=pipeline)
            return DATASETS.build(ds)
        yield cfg, model, dataset


def predictions(samples):
    out = []
    for s in samples:
        p = s.pred_instances
        order = torch.argsort(p.scores, descending=True, stable=True)
        out.append({k: p[k][order] for k in ('bboxes', 'scores', 'labels', 'masks')})
    return out


def test_single_identity_view_equals_plain_testing(demo):
    cfg, model, dataset = demo
    plain = dataset(cfg.test_pipeline)
    identity_view = copy.deepcopy(cfg.tta_pipeline)
    transforms = identity_view[1]['transforms']
    test_scale = tuple(cfg.test_pipeline[1]['scale'])
    transforms[0] = [t for t in transforms[0] if tuple(t['scale']) == test_scale]
    assert len(transforms[0]) == 1  # the test scale only
    transforms[1] = [dict(type='RandomFlip', prob=0.0)]  # no flip
    tta = dataset(identity_view)
    tta_model = DetMaskTTAModel(module=model, tta_cfg=cfg.tta_model.tta_cfg).eval()
    with torch.no_grad():
        for index in range(3):
            expected = predictions(model.test_step(pseudo_collate([plain[index]])))[0]
            merged = predictions(tta_model.test_step(pseudo_collate([tta[index]])))[0]
            assert len(expected['scores']) > 0
            for key in expected:
                torch.testing.assert_close(merged[key], expected[key], msg=key)


class _Detector(torch.nn.Module):
    def test_step(self, data):  # merge_preds is tested directly
        raise NotImplementedError


def _instances(rng, n=5, size=(40, 60)):
    boxes, masks = [], np.zeros((n, *size), bool)
    for i in range(n):
        x0, y0 = rng.integers(0, 30), rng.integers(0, 20)
        w, h = rng.integers(5, 25), rng.integers(5, 18)
        boxes.append([x0, y0, x0 + w, y0 + h])
        masks[i, y0:y0 + h, x0:x0 + w] = True
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                        scores=torch.tensor(rng.uniform(0.3, 1.0, n), dtype=torch.float32),
                        labels=torch.tensor(rng.integers(0, 3, n)), masks=torch.from_numpy(masks))


@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'diagonal'])
def test_flipped_views_are_mapped_back(direction):
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import bbox_flip
    truth = _instances(np.random.default_rng(0))
    meta = dict(ori_shape=(40, 60), img_shape=(40, 60))
    plain = DetDataSample(metainfo=dict(meta, flip=False, flip_direction=None))
    plain.pred_instances = truth.clone()
    flipped = DetDataSample(metainfo=dict(meta, flip=True, flip_direction=direction))
    dims = {'horizontal': (-1,), 'vertical': (-2,), 'diagonal': (-2, -1)}[direction]
    flipped.pred_instances = InstanceData(
        bboxes=bbox_flip(truth.bboxes, (40, 60), direction), scores=truth.scores * 0.9,
        labels=truth.labels, masks=truth.masks.flip(dims))
    merged = DetMaskTTAModel(module=_Detector()).merge_preds([[plain, flipped]])[0]
    result = merged.pred_instances
    order = torch.argsort(truth.scores, descending=True)
    # the flipped duplicates are suppressed; their masks vote for the same pixels
    torch.testing.assert_close(result.bboxes, truth.bboxes[order])
    torch.testing.assert_close(result.masks, truth.masks[order])


@pytest.mark.parametrize('scores, right_half_kept', [((0.9, 0.4, 0.3), False),
                                                     ((0.5, 0.4, 0.3), True)])
def test_mask_vote_is_score_weighted(scores, right_half_kept):
    """Three views of one object: the best says 'left half', two weaker say 'whole box'."""
    from mmdet.structures import DetDataSample
    masks = torch.ones(3, 10, 10, dtype=torch.bool)
    masks[0, :, 5:] = False
    views = []
    for i, score in enumerate(scores):
        view = DetDataSample(metainfo=dict(ori_shape=(10, 10), flip=False))
        view.pred_instances = InstanceData(bboxes=torch.tensor([[0., 0., 10., 10.]]),
                                           scores=torch.tensor([score]),
                                           labels=torch.tensor([1]), masks=masks[i:i + 1])
        views.append(view)
    result = DetMaskTTAModel(module=_Detector()).merge_preds([views])[0].pred_instances
    assert result.scores.tolist() == [pytest.approx(sum(scores) / 3)]  # seen by all three views
    assert result.masks[0, :, :5].all()  # every view agrees
    # right half: vote (s1 + s2) / (s0 + s1 + s2) against the 0.5 threshold
    assert bool(result.masks[0, :, 5:].all()) is right_half_kept
    assert bool(result.masks[0, :, 5:].any()) is right_half_kept


def test_boxes_are_voted_and_single_view_detections_down_weighted():
    """Two views: one object both see (shifted boxes), one false positive only one view makes."""
    from mmdet.structures import DetDataSample
    seen_twice = [[10., 10., 30., 30.], [12., 10., 32., 30.]]
    views = []
    for i, score in enumerate((0.8, 0.4)):
        view = DetDataSample(metainfo=dict(ori_shape=(50, 50), flip=False))
        boxes = [seen_twice[i]] + ([[40., 40., 48., 48.]] if i == 0 else [])
        view.pred_instances = InstanceData(bboxes=torch.tensor(boxes),
                                           scores=torch.tensor([score, 0.7][:len(boxes)]),
                                           labels=torch.zeros(len(boxes), dtype=torch.long))
        views.append(view)
    result = DetMaskTTAModel(module=_Detector()).merge_preds([views])[0].pred_instances
    # score-weighted box: x = (0.8 * 10 + 0.4 * 12) / 1.2; scores averaged over the two views
    torch.testing.assert_close(result.bboxes, torch.tensor([[32 / 3, 10., 92 / 3, 30.],
                                                            [40., 40., 48., 48.]]))
    torch.testing.assert_close(result.scores, torch.tensor([0.6, 0.35]))
