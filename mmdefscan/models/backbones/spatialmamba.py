"""Spatial-Mamba (Xiao et al., ICLR 2025, arXiv:2410.15091): a vision Mamba whose single raster
scan is followed by structure-aware state fusion (the paper's method section: state transition,
structure-aware state fusion with dilated depthwise kernels over the hidden states, observation
equation). Keys and outputs equal the official ``MM_SpatialMamba`` backbone of
github.com/EdwardChasel/Spatial-Mamba @ 71221eb (``detection/model.py``,
``classification/models/spatialmamba.py``); differences: docs/architecture.md.

Layout between blocks is channels-last (B, H, W, C); outputs are NCHW. Train and eval compute the
same function (the eval path fuses the state-fusion kernels); unlike the official code the fused
kernel always follows the current weights (see :mod:`mmdefscan.ops.state_fusion`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import LayerNorm, StateFusion, selective_scan_states
from ...ops.state_fusion import fuse_read_out_ref
from ...registry import register_backbone
from ..layers import DropPath, Mlp, batched_matmul, stage_dims, stochastic_depth_rates
from .base import ChannelsLastBackbone

# dims (int -> dims * 2**i), depths and the classification drop-path rate of each variant
ARCH_SETTINGS = {
    'tiny': dict(dims=64, depths=(2, 4, 8, 4), drop_path_rate=0.2),
    'small': dict(dims=64, depths=(2, 4, 21, 5), drop_path_rate=0.3),
    'base': dict(dims=96, depths=(2, 4, 21, 5), drop_path_rate=0.5),
}

# Official keywords that do not change the backbone (the official backbone ignores them too:
# no pos_drop in its forward, no head, an image-size-free stem), and the Swin keys the official
# detection / segmentation configs merge into the dict.
_IGNORED_OFFICIAL_KEYS = frozenset({
    'img_size', 'patch_size', 'num_classes', 'drop_rate', 'patch_norm',
    'embed_dims', 'num_heads', 'window_size', 'qkv_bias', 'qk_scale', 'convert_weights',
    'strides', 'patch_sizes', 'use_abs_pos_embed', 'pretrain_img_size', 'act_cfg', 'norm_cfg',
})
# Official keywords whose other values this port does not implement: name -> the only value.
# (d_state > 1 breaks the official model; norm_layer='bn' gives broken output norms; the
# backbone reads the checkpoint's 'model' entry, as the official default.)
_FIXED_OFFICIAL_KEYS = {'d_state': 1, 'norm_layer': 'ln', 'key': 'model'}
_DT_INITS = ('random', 'constant', 'simple', 'zero')


class ConvLayer(nn.Module):
    """conv -> BatchNorm (optional) -> ReLU (optional) (official ``ConvLayer``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class Stem(nn.Module):
    """NCHW image -> channels-last stride-4 map: conv1 (s2), residual conv2, conv3 (s2, 1x1)."""

    def __init__(self, in_channels, dim):
        super().__init__()
        half = dim // 2
        self.conv1 = ConvLayer(in_channels, half, 3, 2, 1, bias=False)
        self.conv2 = nn.Sequential(ConvLayer(half, half, 3, 1, 1, bias=False),
                                   ConvLayer(half, half, 3, 1, 1, bias=False, act=False))
        self.conv3 = nn.Sequential(ConvLayer(half, 4 * dim, 3, 2, 1, bias=False),
                                   ConvLayer(4 * dim, dim, 1, bias=False, act=False))

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class DownSampling(nn.Module):
    """Channels-last C -> 2C at stride 2: 1x1 expand (8C), depthwise 3x3 s2, 1x1 + BN."""

    def __init__(self, dim, ratio=4):
        super().__init__()
        hidden = 2 * dim * ratio
        self.conv = nn.Sequential(
            ConvLayer(dim, hidden, 1, norm=False),
            ConvLayer(hidden, hidden, 3, 2, 1, groups=hidden, norm=False),
            ConvLayer(hidden, 2 * dim, 1, act=False))

    def forward(self, x):
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class StructureAwareSSM(nn.Module):
    """Token mixer (official ``StructureAwareSSM``): in_proj -> SiLU(dwconv) -> one raster state
    scan -> state fusion -> y = C * h_fused + D * u -> out_norm -> gate SiLU(z) -> out_proj."""

    def __init__(self, dim, d_state=1, expand=2, dt_init='random', dropout=0.0,
                 fusion_dilations=StateFusion.official_dilations):
        super().__init__()
        d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.x_proj_weight = nn.Parameter(torch.empty(self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(d_inner))
        self.A_logs = nn.Parameter(torch.empty(d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(d_inner))
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        # no dilations: no state fusion, the plain single-scan Mamba read-out C h + D u
        self.state_fusion = StateFusion(d_inner, fusion_dilations) if fusion_dilations else None
        self.out_norm = LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.reset_ssm_parameters(dt_init)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_init='random', dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        """Official initialisation (Mamba's; only matters when training from scratch)."""
        bound = self.x_proj_weight.shape[1] ** -0.5  # nn.Linear's default init, kept officially
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank ** -0.5
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        if dt_init == 'constant':
            nn.init.constant_(self.dt_projs_weight, std)
        elif dt_init == 'random':
            nn.init.uniform_(self.dt_projs_weight, -std, std)
        else:  # 'simple': 0.1 N(0, 1); 'zero': 0.1 U(0, 1) (weight and bias)
            draw = torch.randn_like if dt_init == 'simple' else torch.rand_like
            self.dt_projs_weight.copy_(0.1 * draw(self.dt_projs_weight))
            self.dt_projs_bias.copy_(0.1 * draw(self.dt_projs_bias))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32))
                          .expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def ssm_parameters(self, u):
        """The scanned tokens u (B, D, L) -> dts (B, D, L, before the bias and softplus), Bs and
        Cs (B, N, L)."""
        x_dbl = batched_matmul(self.x_proj_weight, u)
        dts, Bs, Cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=1)
        return batched_matmul(self.dt_projs_weight, dts), Bs, Cs

    def read_out(self, u, height, width, dts, Bs, Cs):
        """The state scan of u (B, D, H*W), fused, read out: y (B, H, W, D) = C * fused states
        + D * u."""
        h = selective_scan_states(u, dts, -torch.exp(self.A_logs), Bs, self.dt_projs_bias,
                                  delta_softplus=True)  # (B, D, 1, L), float32 (or float64)
        h = h.view(u.shape[0], u.shape[1], height, width)
        if self.state_fusion is None:
            return fuse_read_out_ref(None, h, Cs, u, self.Ds)
        return self.state_fusion.read_out(h, Cs, u, self.Ds)

    def ssm(self, x):
        """x (B, D, H, W) -> y (B, H, W, D) = C * fused states + D * u."""
        u = x.flatten(2)
        return self.read_out(u, *x.shape[2:], *self.ssm_parameters(u))

    def scan_input(self, x):
        """The block's normed tokens (B, H, W, C) -> the scanned map x (B, D, H, W) and the gate
        branch z (B, H, W, D)."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        return F.silu(self.conv2d(x.permute(0, 3, 1, 2))), z

    def forward(self, x):
        x, z = self.scan_input(x)
        y = self.out_norm(self.ssm(x).to(self.out_norm.weight.dtype))
        y = self.out_proj(y * F.silu(z))
        return self.dropout(y) if self.dropout is not None else y


class SpatialMambaBlock(nn.Module):
    """x + cpe1(x); x + DropPath(mixer(ln_1(x))); x + cpe2(x); x + DropPath(mlp(ln_2(x)))."""

    def __init__(self, dim, drop_path=0.0, mlp_ratio=4.0, attn_drop_rate=0.0, **ssm_kwargs):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        # the two block norms feed Linears: under autocast they write the autocast dtype
        self.ln_1 = LayerNorm(dim, autocast_output=True)
        self.self_attention = StructureAwareSSM(dim, dropout=attn_drop_rate, **ssm_kwargs)
        self.drop_path = DropPath(drop_path)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ln_2 = LayerNorm(dim, autocast_output=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    @staticmethod
    def _pos(conv, x):
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x):
        x = x + self._pos(self.cpe1, x)
        x = self.drop_path.residual(x, self.self_attention(self.ln_1(x)))
        x = x + self._pos(self.cpe2, x)
        return self.drop_path.residual(x, self.mlp(self.ln_2(x)))


class SpatialMambaStage(nn.Module):
    def __init__(self, blocks, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample  # None after the last stage (no keys, as officially)


@register_backbone
class SpatialMamba(ChannelsLastBackbone):
    """Spatial-Mamba backbone for mmdet / mmseg / mmpretrain.

    Args:
        arch: 'tiny' | 'small' | 'base' (or a dict with ``dims``, ``depths``).
        out_indices: stages whose (output-normed) maps are returned, NCHW.
        frozen_stages: -1 none; 0 the stem; k the stem and stages 0..k-1 (with their
            downsampling and output norms).
        drop_path_rate: stochastic depth; defaults to the variant's ImageNet value.
        with_cp: activation checkpointing per block (saves memory, costs a recompute).
        cuda_graph: replay the training forward + backward from CUDA graphs, captured for the
            first 8 input shapes (an int N: N shapes); see ``mmdefscan/models/cuda_graph.py``.
        init_cfg: ``dict(type='Pretrained', checkpoint=..., prefix=...)`` loads strictly; official
            ImageNet checkpoints (``'model'`` with ``norm.*`` / ``head.*``, no output norms) load
            as they are.
        fusion_dilations: the state fusion's dilations (official 1, 3, 5); None or () for no
            state fusion, a plain single-scan Mamba (y = C h + D u).
        **official_kwargs: the official ``Backbone_SpatialMamba`` keywords (``dims``, ``depths``,
            ``d_state``, ``dt_init``, ``mlp_ratio``, ``attn_drop_rate``, ``use_checkpoint``,
            ``pretrained``, ...) and the Swin keys its det/seg configs merge in, so an official
            backbone dict works with only ``type`` changed.
    """
    head_prefixes = ('norm.', 'head.')
    optional_prefixes = ('outnorm',)
    official_ignored = _IGNORED_OFFICIAL_KEYS
    official_fixed = _FIXED_OFFICIAL_KEYS

    def __init__(self, arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 drop_path_rate=None, with_cp=False, cuda_graph=False, init_cfg=None,
                 fusion_dilations=StateFusion.official_dilations, **official_kwargs):
        cfg = self._resolve_config(arch, drop_path_rate, official_kwargs)
        super().__init__(init_cfg=init_cfg, cuda_graph=cuda_graph, official=official_kwargs)
        dims, depths = cfg['dims'], cfg['depths']
        self.dims = dims
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp or cfg['use_checkpoint']
        self.in_channels = cfg['in_chans']

        self.patch_embed = Stem(self.in_channels, dims[0])
        rates = stochastic_depth_rates(cfg['drop_path_rate'], depths)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            blocks = [SpatialMambaBlock(dims[i], rates[i][j], mlp_ratio=cfg['mlp_ratio'],
                                        attn_drop_rate=cfg['attn_drop_rate'],
                                        d_state=cfg['d_state'], dt_init=cfg['dt_init'],
                                        fusion_dilations=tuple(fusion_dilations or ()))
                      for j in range(depth)]
            if i < len(depths) - 1:
                if dims[i + 1] != 2 * dims[i]:
                    raise ValueError(f'SpatialMamba: each stage doubles the width (official '
                                     f'DownSampling), got dims {dims}')
                downsample = DownSampling(dims[i])
            else:
                downsample = None
            self.layers.append(SpatialMambaStage(blocks, downsample))
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', LayerNorm(dims[i]))
        self.apply(self._init_module)

    @classmethod
    def _resolve_config(cls, arch, drop_path_rate, official):
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'SpatialMamba: arch {arch!r} is not one of '
                                 f'{sorted(ARCH_SETTINGS)}')
            arch = ARCH_SETTINGS[arch]
        cfg = dict(dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2, d_state=1,
                   dt_init='random', mlp_ratio=4.0, attn_drop_rate=0.0, in_chans=3,
                   use_checkpoint=False)
        cfg.update(arch)
        # official d_state=None means ceil(dims[0] / 6) states, checked below
        auto_d_state = 'd_state' in official and official['d_state'] is None
        cls._merge_official(cfg, {k: v for k, v in official.items()
                                  if not (k == 'd_state' and auto_d_state)})
        if drop_path_rate is not None:
            cfg['drop_path_rate'] = drop_path_rate
        if cfg['dt_init'] not in _DT_INITS:
            raise ValueError(f"SpatialMamba: dt_init={cfg['dt_init']!r} is not one of {_DT_INITS}")
        cfg['depths'] = list(cfg['depths'])
        cfg['dims'] = stage_dims(cfg['dims'], cfg['depths'], 'SpatialMamba')
        if auto_d_state and math.ceil(cfg['dims'][0] / 6) != 1:
            raise ValueError('SpatialMamba: d_state=None means ceil(dims[0] / 6) states; only 1 '
                             'is supported (the official model fails for more)')
        return cfg