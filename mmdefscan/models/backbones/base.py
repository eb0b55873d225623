"""What every mmdefscan backbone shares: the official constructor keywords, strict pretrained
loading, frozen stages, input checks, opt-in CUDA graphs."""
import gc
import logging

import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule

from ..checkpoint import load_backbone_weights
from ..cuda_graph import CudaGraphCache


# MMEngine's names for model-zoo checkpoints: weights of other models (ResNet, Swin, ...), never
# of these backbones. mmseg's EncoderDecoder hands its own ``pretrained`` (the stock configs'
# ``'open-mmlab://resnet50_v1c'``) to whatever backbone it builds.
MODEL_ZOO_SCHEMES = ('open-mmlab://', 'openmmlab://', 'torchvision://', 'mmcls://',
                     'modelzoo://')


class ScanBackbone(BaseModule):
    """Base of the backbones. Subclasses set the class attributes below and ``self.frozen_stages``
    and implement ``_frozen_modules(stage)`` (stage -1 = stem) and ``forward_eager(x)``.

    ``cuda_graph=True`` (or N): training steps on CUDA replay the backbone's forward and backward
    from CUDA graphs, and eval forwards without grad an inference graph, each captured for the
    first 8 (N) input shapes (see ``cuda_graph.py``).

    The official constructor's keywords (``official``, see :meth:`_merge_official`) are accepted,
    so that an official backbone dict works with only ``type`` changed, inside the official
    det / seg configs as they are: those inherit mmdet's / mmseg's Swin-T configs, whose backbone
    keys (``embed_dims``, ``window_size``, ...) and ``init_cfg`` (the Swin-T checkpoint) merge
    into the dict. As in the official backbones, ``pretrained`` then decides the weights (see
    :meth:`_weights_init_cfg`)."""

    in_channels = 3
    head_prefixes = ()  # classification-head keys dropped when loading an ImageNet checkpoint
    optional_prefixes = ()  # keys a classification checkpoint cannot have (new output norms)
    official_ignored = frozenset()  # official keywords that do not change the network
    official_fixed = {}  # official keywords with a single supported value: name -> value

    def __init__(self, init_cfg=None, cuda_graph=False, official=None):
        super().__init__(init_cfg=self._weights_init_cfg(init_cfg, official or {}))
        self.cuda_graph = CudaGraphCache.from_option(cuda_graph)

    @classmethod
    def _merge_official(cls, cfg, official):
        """``cfg`` (the variant's settings) updated with the official keywords ``official``.

        Unknown keywords raise TypeError, another value of a fixed one ValueError; ignored ones
        are logged (those given as None / 0, which ask for nothing, are not). ``in_channels`` is
        the mm name of ``in_chans``; ``pretrained`` is :meth:`_weights_init_cfg`'s.
        """
        name = cls.__name__
        official = {k: v for k, v in official.items() if k != 'pretrained'}
        if 'in_channels' in official:
            if 'in_chans' in official:
                raise TypeError(f'{name}: give in_chans or in_channels, not both')
            official['in_chans'] = official.pop('in_channels')
        unknown = sorted(set(official) - set(cfg) - cls.official_ignored - set(cls.official_fixed))
        if unknown:
            raise TypeError(f'{name} got unknown keyword(s) {unknown}')
        for key, value in official.items():
            if key in cls.official_fixed:
                only = cls.official_fixed[key]
                values = value if isinstance(value, (list, tuple)) else [value]
                if any(str(getattr(v, '__name__', v)).lower() != str(only).lower()
                       for v in values):
                    raise ValueError(f'{name}: {key}={value!r} is not supported (only {only!r})')
            elif key not in cls.official_ignored:
                cfg[key] = value
        ignored = sorted(k for k in official if k in cls.official_ignored
                         and official[k] not in (None, 0))
        if ignored:
            print_log(f'{name}: ignoring official keys that do not affect it: {ignored}',
                      logger='current')
        return cfg

    @classmethod
    def _weights_init_cfg(cls, init_cfg, official):
        """The ``init_cfg`` to build with. Without the official ``pretrained`` keyword, the given
        one. With it, as in the official backbones, ``pretrained`` decides: a path loads strictly
        (``dict(type='Pretrained', checkpoint=path)``), ``None`` / ``''`` means none, and an
        ``init_cfg`` beside it (the Swin-T checkpoint of an inherited Swin config) is ignored with
        a warning naming it. A model-zoo name (:data:`MODEL_ZOO_SCHEMES`, another model's
        weights) is ignored with a warning."""
        if 'pretrained' not in official:
            return init_cfg
        name, pretrained = cls.__name__, official['pretrained']
        if isinstance(pretrained, str) and pretrained.startswith(MODEL_ZOO_SCHEMES):
            print_log(f'{name}: ignoring pretrained={pretrained!r}: a model-zoo checkpoint of '
                      'another model (an mmseg segmentor passes its own pretrained= to the '
                      'backbone; set model.pretrained=None)', logger='current',
                      level=logging.WARNING)
            return init_cfg
        if init_cfg is not None:
            print_log(f'{name}: ignoring init_cfg={dict(init_cfg)}: the official pretrained= '
                      f'decides the weights ({pretrained!r})', logger='current',
                      level=logging.WARNING)
        return dict(type='Pretrained', checkpoint=pretrained) if pretrained else None

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
