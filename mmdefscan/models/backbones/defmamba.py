"""DefMamba (Liu et al., CVPR 2025, arXiv:2504.05794): a vision Mamba whose third scan direction
follows deformable points in a learned token order (the paper's method section: the Deformable
Mamba block, deformable points with offset bias, deformable tokens). Keys and outputs equal the
official ``MM_VSSM`` backbone of github.com/leiyeliu/DefMamba @ 3088a34
(``detection/model.py``, ``classification/models/vmamba.py`` and ``utils.py``); where this
implementation deliberately differs (1-pixel stages, the sort's gradient kept as the official
heuristic): docs/architecture.md.

Layout between blocks is channels-last (B, H, W, C); outputs are NCHW.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from ...ops import (DeformableScan, DepthwiseConv2d, LayerNorm, merge_scans_gate,
                    selective_scan_fn)
from ...registry import register_backbone
from ..layers import DropPath, Mlp, Permute, stage_dims, stochastic_depth_rates
from .base import ChannelsLastBackbone

# dims (int -> dims * 2**i), depths and the classification drop-path rate of each variant
ARCH_SETTINGS = {
    'tiny': dict(dims=48, depths=(2, 2, 5, 2), drop_path_rate=0.2),
    'small': dict(dims=96, depths=(2, 2, 6, 2), drop_path_rate=0.2),
    'base': dict(dims=96, depths=(2, 3, 16, 2), drop_path_rate=0.4),
}

# Keywords of the official builder / MM_VSSM that do not change this network (the official model
# ignores them too), and the Swin keys the official detection configs merge into the dict.
_IGNORED_OFFICIAL_KEYS = {
    'num_classes', 'ssm_rank_ratio', 'ssm_simple_init', 'forward_type', 'norm_layer', 'gmlp',
    'posembed', 'imgsize', 'convffn', 'add_se', 'ffn_dropout',
    'embed_dims', 'num_heads', 'window_size', 'qkv_bias', 'qk_scale', 'drop_rate',
    'attn_drop_rate', 'convert_weights', 'strides', 'patch_sizes', 'use_abs_pos_embed',
    'pretrain_img_size', 'act_cfg', 'norm_cfg',
}
# Official keywords whose non-default values this port does not implement (none of the released
# variants uses them): name -> the only supported value.
_FIXED_OFFICIAL_KEYS = {
    'patch_size': 4, 'ssm_act_layer': 'silu', 'ssm_conv': 3, 'ssm_conv_bias': True,
    'mlp_act_layer': 'gelu', 'patch_norm': True, 'downsample_version': 'v3',
    'patchembed_version': 'v2',
}


class DeformableSSM(nn.Module):
    """Token mixer (official ``DSSM``): in_proj -> SiLU(dwconv) -> 3-direction scan
    (raster, reversed, deformable) -> average -> gate SiLU(z) -> out_proj."""
    directions = 3

    def __init__(self, dim, stage, d_state=16, ssm_ratio=1.0, dt_rank='auto'):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        k = self.directions
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = DepthwiseConv2d(d_inner, 3)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.DS = DeformableScan(d_inner, stage)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        """Mamba's initialisation, as the official ``DSSM``: only matters when training from scratch."""
        nn.init.trunc_normal_(self.x_proj_weight, std=0.02)
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_projs_weight, -bound, bound)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32))
                          .expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def scan(self, x, z):
        """x (B, D, H, W) contiguous, gate z (B, H, W, D) -> (B, H, W, D): the three scans
        averaged in token order, times SiLU(z)."""
        batch, d_inner, height, width = x.shape
        length = height * width
        sorted_tokens, order = self.DS(x)
        raster = x.flatten(2)
        xs = torch.stack((raster, raster.flip(-1), sorted_tokens), 1)  # (B, K, D, L)
        # per-direction projections as broadcast matmuls: einsum would save a permuted copy of xs
        x_dbl = torch.matmul(self.x_proj_weight, xs)  # (B, K, dt_rank + 2N, L)
        dts, Bs, Cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (B, K, D, L)
        ys = selective_scan_fn(
            xs.view(batch, -1, length), dts.view(batch, -1, length), -self.A_logs.exp(),
            Bs, Cs, self.Ds, delta_bias=self.dt_projs_bias.reshape(-1), delta_softplus=True)
        return merge_scans_gate(ys.view(batch, self.directions, d_inner, length), order, z)

    def forward(self, x):
        x, z = self.in_proj(x).chunk(2, dim=-1)
        # channel-first and contiguous from here: the depthwise convs get a fast layout (cuDNN's
        # channels-last grouped kernel is slow for the 9x9 offset conv) and raster is a view
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        return self.out_proj(self.scan(x, z))


class DefMambaBlock(nn.Module):
    """x + DropPath(op(norm(x))), then x + DropPath(mlp(norm2(x))) (official ``VSSBlock``)."""

    def __init__(self, dim, stage, drop_path=0.0, mlp_ratio=4.0, **ssm_kwargs):
        super().__init__()
        # the norms feed Linear layers: under autocast they may return the autocast dtype
        self.norm = LayerNorm(dim, autocast_output=True)
        self.op = DeformableSSM(dim, stage, **ssm_kwargs)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, autocast_output=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = self.drop_path.residual(x, self.op(self.norm(x)))
        return self.drop_path.residual(x, self.mlp(self.norm2(x)))


class DefMambaStage(nn.Module):
    def __init__(self, blocks, downsample):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample


@register_backbone
class DefMamba(ChannelsLastBackbone):
    """DefMamba backbone for mmdet / mmseg / mmpretrain.

    Args:
        arch: 'tiny' | 'small' | 'base' (or a dict with ``dims``, ``depths``).
        out_indices: stages whose (output-normed) maps are returned, NCHW.
        frozen_stages: -1 none; 0 the stem; k the stem and stages 0..k-1.
        drop_path_rate: stochastic depth; defaults to the variant's ImageNet value.
        with_cp: activation checkpointing per block (saves memory, costs a recompute).
        cuda_graph: replay the training forward + backward from CUDA graphs, captured for the
            first 8 input shapes (an int N: N shapes); see ``mmdefscan/models/cuda_graph.py``.
        init_cfg: ``dict(type='Pretrained', checkpoint=..., prefix=...)`` loads strictly.
        **official_kwargs: the official ``MM_VSSM`` keywords (``dims``, ``depths``,
            ``ssm_d_state``, ``ssm_ratio``, ``ssm_dt_rank``, ``mlp_ratio``, ``pretrained``, ...),
            so an official backbone dict works with only ``type`` changed.
    """
    head_prefixes = ('classifier.',)
    optional_prefixes = ('outnorm',)

    def __init__(self, arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 drop_path_rate=None, with_cp=False, cuda_graph=False, init_cfg=None,
                 **official_kwargs):
        cfg = self._resolve_config(arch, drop_path_rate, official_kwargs)
        if cfg.pop('pretrained', None):
            if init_cfg is not None:
                raise ValueError('DefMamba: give either pretrained= or init_cfg=, not both')
            init_cfg = dict(type='Pretrained', checkpoint=official_kwargs['pretrained'])
        super().__init__(init_cfg=init_cfg, cuda_graph=cuda_graph)
        dims, depths = cfg['dims'], cfg['depths']
        self.dims = dims
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp or cfg['use_checkpoint']
        self.in_channels = cfg['in_chans']

        self.patch_embed = nn.Sequential(
            nn.Conv2d(self.in_channels, dims[0] // 2, 3, 2, 1), Permute(0, 2, 3, 1),
            LayerNorm(dims[0] // 2), Permute(0, 3, 1, 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1), Permute(0, 2, 3, 1), LayerNorm(dims[0]))
        ssm_kwargs = dict(d_state=cfg['ssm_d_state'], ssm_ratio=cfg['ssm_ratio'],
                          dt_rank=cfg['ssm_dt_rank'], mlp_ratio=cfg['mlp_ratio'])
        rates = stochastic_depth_rates(cfg['drop_path_rate'], depths)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            downsample = nn.Sequential(
                Permute(0, 3, 1, 2), nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1),
                Permute(0, 2, 3, 1), LayerNorm(dims[i + 1])) if i < len(depths) - 1 \
                else nn.Identity()
            blocks = [DefMambaBlock(dims[i], i, rates[i][j], **ssm_kwargs) for j in range(depth)]
            self.layers.append(DefMambaStage(blocks, downsample))
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', LayerNorm(dims[i]))
        self.apply(self._init_module)

    @staticmethod
    def _resolve_config(arch, drop_path_rate, official):
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'DefMamba: arch {arch!r} is not one of {sorted(ARCH_SETTINGS)}')
            arch = ARCH_SETTINGS[arch]
        cfg = dict(dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2, ssm_d_state=16,
                   ssm_ratio=1.0, ssm_dt_rank='auto', mlp_ratio=4.0, in_chans=3,
                   use_checkpoint=False, pretrained=None, ssm_drop_rate=0.0, mlp_drop_rate=0.0)
        cfg.update(arch)
        ignored = sorted(set(official) & _IGNORED_OFFICIAL_KEYS)
        unknown = sorted(set(official) - _IGNORED_OFFICIAL_KEYS - set(_FIXED_OFFICIAL_KEYS)
                         - set(cfg))
        if unknown:
            raise TypeError(f'DefMamba got unknown keyword(s) {unknown}')
        for key, value in official.items():
            if key in _FIXED_OFFICIAL_KEYS:
                if str(value).lower() != str(_FIXED_OFFICIAL_KEYS[key]).lower():
                    raise ValueError(f'DefMamba: {key}={value!r} is not supported '
                                     f'(only {_FIXED_OFFICIAL_KEYS[key]!r})')
            elif key not in _IGNORED_OFFICIAL_KEYS:
                cfg[key] = value
        if cfg['ssm_drop_rate'] or cfg['mlp_drop_rate']:
            raise ValueError('DefMamba: ssm_drop_rate / mlp_drop_rate must be 0 (as released)')
        if drop_path_rate is not None:
            cfg['drop_path_rate'] = drop_path_rate
        if ignored:
            print_log(f'DefMamba: ignoring official keys that do not affect it: {ignored}',
                      logger='current')
        cfg['depths'] = list(cfg['depths'])
        cfg['dims'] = stage_dims(cfg['dims'], cfg['depths'], 'DefMamba')
        return cfg
