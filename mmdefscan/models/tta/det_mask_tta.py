"""Test-time augmentation for instance segmentation (boxes AND masks).

mmdet 3.3's ``DetTTAModel`` asserts "TTA of instance segmentation does not support now". This
model merges every view of an image: boxes and masks are mapped back to the original image
(un-flipped; the detector already rescales them), then class-wise NMS keeps the best boxes. The
cluster of a kept box is the same-class boxes it suppressed (IoU > the NMS threshold): its box is
the score-weighted vote of the cluster's boxes, its mask the score-weighted vote of their masks
thresholded at ``mask_thr``, and its score the mean over the views of each view's best member
(a detection that only one view makes is down-weighted). With one identity view the result
equals plain testing.
"""
import torch
from mmengine.model import BaseTTAModel
from mmengine.structures import InstanceData

from ...registry import MODELS

_FLIP_DIMS = {'horizontal': (-1,), 'vertical': (-2,), 'diagonal': (-2, -1)}


def _unflip(boxes, masks, meta):
    if not meta.get('flip', False):
        return boxes, masks
    from mmdet.structures.bbox import bbox_flip
    direction = meta['flip_direction']
    boxes = bbox_flip(boxes, meta['ori_shape'], direction)
    if masks is not None:
        masks = masks.flip(_FLIP_DIMS[direction])
    return boxes, masks


def _box_iou(a, b):
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-6)


@MODELS.register_module()
class DetMaskTTAModel(BaseTTAModel):
    """TTA wrapper for Mask R-CNN-style detectors.

    Args:
        tta_cfg: ``dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100,
            mask_thr=0.5)``.
    """

    def __init__(self, tta_cfg=None, **kwargs):
        super().__init__(**kwargs)
        self.tta_cfg = dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100,
                            mask_thr=0.5)
        self.tta_cfg.update(tta_cfg or {})

    def merge_preds(self, data_samples_list):
        return [self._merge_views(views) for views in data_samples_list]

    def _merge_views(self, views):
        boxes, scores, labels, masks, view_ids = [], [], [], [], []
        for index, view in enumerate(views):
            pred = view.pred_instances
            view_boxes, view_masks = _unflip(pred.bboxes, pred.get('masks'), view.metainfo)
            boxes.append(view_boxes)
            scores.append(pred.scores)
            labels.append(pred.labels)
            masks.append(view_masks)
            view_ids.append(torch.full_like(pred.labels, index))
        merged = views[0]
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        view_ids = torch.cat(view_ids)
        if boxes.numel() == 0:
            return merged
        from mmcv.ops import batched_nms  # compiled op: imported on use
        _, keep = batched_nms(boxes, scores, labels, self.tta_cfg['nms'])
        keep = keep[:self.tta_cfg['max_per_img']]
        # the cluster of a kept box: the same-class boxes it suppressed (IoU > the NMS threshold)
        cluster = (_box_iou(boxes[keep], boxes) > self.tta_cfg['nms']['iou_threshold']) & \
            (labels[keep][:, None] == labels[None])
        cluster[torch.arange(len(keep)), keep] = True
        weights = cluster * scores[None]  # (kept, all)
        # box: score-weighted vote of its cluster; score: each view's best member, averaged over
        # the views (a box that only one view sees is down-weighted)
        result_boxes = weights @ boxes / weights.sum(1, keepdim=True)
        per_view = torch.zeros(len(keep), len(views), dtype=scores.dtype, device=scores.device)
        per_view.scatter_reduce_(1, view_ids[None].expand_as(weights), weights, 'amax')
        result_scores = per_view.mean(1)
        order = torch.argsort(result_scores, descending=True, stable=True)
        result = InstanceData(bboxes=result_boxes[order], scores=result_scores[order],
                              labels=labels[keep][order])
        if masks[0] is not None:
            masks = torch.cat(masks)  # boolean, full image size: vote cluster by cluster
            votes = []
            for members in cluster[order]:
                weight = scores[members]
                vote = (masks[members].float() * weight[:, None, None]).sum(0) / weight.sum()
                votes.append(vote >= self.tta_cfg['mask_thr'])
            result.masks = torch.stack(votes)
        merged.pred_instances = result
        return merged
