"""What every mmdefscan backbone shares: strict pretrained loading, frozen stages, input checks,
opt-in CUDA graphs."""
import gc

import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule

from ..checkpoint import load_backbone_weights
from ..cuda_graph import CudaGraphCache


class ScanBackbone(BaseModule):
    """Base of the backbones. Subclasses set the class attributes below and ``self.frozen_stages``
    and implement ``_frozen_modules(stage)`` (stage -1 = stem) and ``forward_eager(x)``.

    ``cuda_graph=True`` (or N): training steps on CUDA replay the backbone's forward and backward
    from CUDA graphs, and eval forwards without grad an inference graph, each captured for the
    first 8 (N) input shapes (see ``cuda_graph.py``)."""

    in_channels = 3
    head_prefixes = ()  # classification-head keys dropped when loading an ImageNet checkpoint
    optional_prefixes = ()  # keys a classification checkpoint cannot have (new output norms)

    def __init__(self, init_cfg=None, cuda_graph=False):
        super().__init__(init_cfg=init_cfg)
        self.cuda_graph = CudaGraphCache.from_option(cuda_graph)

    def forward(self, x):
        self._check_input(x)
        if self.cuda_graph is not None and self.cuda_graph.applies(self, x):
            return self.cuda_graph(self, x)
        return self.forward_eager(x)

    def forward_eager(self, x):
        raise NotImplementedError

    def release_cuda_graph(self):
        """Drop the captured graphs and their memory; training steps capture again. torch's
        graphed callables are classes made per capture, which sit in reference cycles: their
        memory returns only after a collection (0.4-1.0 GiB per graphed model in
        tools/analysis/benchmark.py)."""
        if self.cuda_graph is not None:
            self.cuda_graph = CudaGraphCache(self.cuda_graph.max_shapes)
            gc.collect()

    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError(f"{type(self).__name__}: init_cfg type='Pretrained' needs 'checkpoint'")
            load_backbone_weights(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                                  head_prefixes=self.head_prefixes,
                                  optional_prefixes=self.optional_prefixes)
            self._is_init = True
        else:
            super().init_weights()

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (B, {self.in_channels}, H, W) input, '
                             f'got {tuple(x.shape)}')

    def _frozen_modules(self, stage):
        raise NotImplementedError

    def _freeze_stages(self):
        for stage in range(-1, self.frozen_stages):
            for module in self._frozen_modules(stage):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self


class ChannelsLastBackbone(ScanBackbone):
    """Stem ``patch_embed`` then ``layers[i].blocks`` / ``.downsample`` on channels-last maps,
    outputs ``outnorm{i}`` of each stage's pre-downsample map as NCHW (DefMamba, Spatial-Mamba).
    """

    @staticmethod
    def _init_module(m):
        """Official model-level init: trunc_normal(0.02) Linear, LN weight 1 bias 0."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _frozen_modules(self, stage):
        if stage < 0:
            return [self.patch_embed]
        norm = getattr(self, f'outnorm{stage}', None)
        return [self.layers[stage]] + ([norm] if norm is not None else [])

    def _run_blocks(self, blocks, x):
        for block in blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_eager(self, x):
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            feat = self._run_blocks(layer.blocks, x)
            if layer.downsample is not None:
                x = layer.downsample(feat)
            if i in self.out_indices:
                outs.append(getattr(self, f'outnorm{i}')(feat).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
