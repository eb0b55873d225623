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

from ...ops import (DeformableScan, DepthwiseConv2d, LayerNorm, merge_scans_gate,
                    merge_scans_gate_ref, selective_scan_fn)
from ...ops.tracing import size_cache
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
_IGNORED_OFFICIAL_KEYS = frozenset({
    'num_classes', 'ssm_rank_ratio', 'ssm_simple_init', 'forward_type', 'norm_layer', 'gmlp',
    'posembed', 'imgsize', 'convffn', 'add_se', 'ffn_dropout',
    'embed_dims', 'num_heads', 'window_size', 'qkv_bias', 'qk_scale', 'drop_rate',
    'attn_drop_rate', 'convert_weights', 'strides', 'patch_sizes', 'use_abs_pos_embed',
    'pretrain_img_size', 'act_cfg', 'norm_cfg',
})
# Official keywords whose non-default values this port does not implement (none of the released
# variants uses them): name -> the only supported value.
_FIXED_OFFICIAL_KEYS = {
    'patch_size': 4, 'ssm_act_layer': 'silu', 'ssm_conv': 3, 'ssm_conv_bias': True,
    'mlp_act_layer': 'gelu', 'patch_norm': True, 'downsample_version': 'v3',
    'patchembed_version': 'v2',
}


# DefMamba's scan directions: raster, reversed raster, and one permuted third direction (the
# deformable scan, or the fixed orders the paper's ablation compares it with).
DIRECTIONS = ('forward', 'backward', 'deformable', 'continuous', 'local')
PERMUTED_DIRECTIONS = ('deformable', 'continuous', 'local')
OFFICIAL_DIRECTIONS = ('forward', 'backward', 'deformable')


def check_directions(directions):
    """``directions`` in the canonical order (forward, backward, then the permuted one), or
    ValueError: a non-empty subset of :data:`DIRECTIONS` with at most one permuted direction."""
    directions = tuple(directions)
    unknown = sorted(set(directions) - set(DIRECTIONS))
    if unknown or not directions or len(set(directions)) != len(directions):
        raise ValueError(f'DefMamba: directions {directions} must be distinct names out of '
                         f'{DIRECTIONS}')
    if sum(d in PERMUTED_DIRECTIONS for d in directions) > 1:
        raise ValueError(f'DefMamba: directions {directions} have more than one of '
                         f'{PERMUTED_DIRECTIONS} (the third direction)')
    return tuple(d for d in DIRECTIONS if d in directions)


@size_cache(maxsize=64)
def fixed_scan_order(kind, height, width, window, device):
    """(H*W,) the raster indices of the tokens in scan order: 'continuous' (PlainMamba's
    continuous scan: rows alternate left-to-right and right-to-left, so consecutive tokens are
    always neighbours) or 'local' (LocalMamba's local scan: window x window windows in raster
    order, raster order inside each; partial windows at the right and bottom edges). Built
    outside inference mode: the cached order may serve a later training step."""
    if kind not in ('continuous', 'local'):
        raise ValueError(f'fixed_scan_order: unknown kind {kind!r}')
    with torch.inference_mode(False):
        rows = torch.arange(height, device=device)[:, None].expand(height, width)
        cols = torch.arange(width, device=device)[None, :].expand(height, width)
        if kind == 'continuous':
            keys = rows * width + torch.where(rows % 2 == 1, width - 1 - cols, cols)
        else:
            windows_per_row = -(-width // window)
            keys = ((rows // window * windows_per_row + cols // window) * window * window
                    + rows % window * window + cols % window)
        return torch.argsort(keys.flatten())


class DeformableSSM(nn.Module):
    """Token mixer (official ``DSSM``): in_proj -> SiLU(dwconv) -> 3-direction scan
    (raster, reversed, deformable) -> average -> gate SiLU(z) -> out_proj.

    ``directions`` (DefMamba's ablations): any subset of forward / backward / one permuted
    direction ('deformable', or the fixed 'continuous' / 'local' orders of
    :func:`fixed_scan_order`, with ``local_window``); one set of SSM parameters per direction.
    ``deformable`` holds :class:`DeformableScan`'s switches (``points``, ``tokens``,
    ``offset_bias``, ``channel_attention``, ``kernel_size``).
    """

    def __init__(self, dim, stage, d_state=16, ssm_ratio=1.0, dt_rank='auto',
                 directions=OFFICIAL_DIRECTIONS, local_window=7, deformable=None):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.directions = check_directions(directions)
        self.local_window = local_window
        k = len(self.directions)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = DepthwiseConv2d(d_inner, 3)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        if 'deformable' in self.directions:
            self.DS = DeformableScan(d_inner, stage, **(deformable or {}))
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

    def scan_input(self, x):
        """The block's normed tokens (B, H, W, C) -> the scanned map x (B, D, H, W), contiguous,
        and the gate branch z (B, H, W, D)."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        # channel-first and contiguous from here: the depthwise convs get a fast layout (cuDNN's
        # channels-last grouped kernel is slow for the 9x9 offset conv) and raster is a view
        return F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous())), z

    def sequences(self, x, path=None):
        """x (B, D, H, W) -> (the scanned sequences (B, K, D, L), the permuted direction's order
        (B, L) or None). ``path``: the deformable scan's (points, keys) to read x with, by
        default predicted from x (:meth:`DeformableScan.points_and_keys`)."""
        raster = x.flatten(2)
        sequences, order = [], None
        for direction in self.directions:
            if direction == 'forward':
                sequences.append(raster)
            elif direction == 'backward':
                sequences.append(raster.flip(-1))
            elif direction == 'deformable':
                tokens, order = self.DS(x) if path is None else self.DS.sample(x, *path)
                sequences.append(tokens)
            else:
                order = fixed_scan_order(direction, *x.shape[2:], self.local_window, x.device)
                sequences.append(raster[:, :, order])
                order = order.expand(x.shape[0], -1)
        return torch.stack(sequences, 1), order

    def ssm_parameters(self, xs):
        """The sequences xs (B, K, D, L) -> their dts (B, K, D, L, before the bias and softplus),
        Bs and Cs (B, K, N, L)."""
        # per-direction projections as broadcast matmuls: einsum would save a permuted copy of xs
        x_dbl = torch.matmul(self.x_proj_weight, xs)  # (B, K, dt_rank + 2N, L)
        dts, Bs, Cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        return torch.matmul(self.dt_projs_weight, dts), Bs, Cs

    def merge(self, ys, order, z):
        """The scans' outputs ys (B, K, D, L) in token order, averaged, times SiLU(z)."""
        if self.directions[:2] == ('forward', 'backward') and len(self.directions) == 3:
            return merge_scans_gate(ys, order, z)
        # the fused merge kernel takes exactly forward, backward and one permuted direction;
        # the other direction sets of the ablations merge in PyTorch
        return merge_scans_gate_ref(ys, order, z, [
            'permuted' if d in PERMUTED_DIRECTIONS else d for d in self.directions])

    def ssm(self, xs, dts, Bs, Cs):
        """The selective scans of the sequences xs (B, K, D, L) -> ys (B, K, D, L)."""
        batch, _, d_inner, length = xs.shape
        ys = selective_scan_fn(
            xs.reshape(batch, -1, length), dts.reshape(batch, -1, length), -self.A_logs.exp(),
            Bs, Cs, self.Ds, delta_bias=self.dt_projs_bias.reshape(-1), delta_softplus=True)
        return ys.view(xs.shape)

    def scan(self, x, z):
        """x (B, D, H, W) contiguous, gate z (B, H, W, D) -> (B, H, W, D): the scans averaged in
        token order, times SiLU(z)."""
        xs, order = self.sequences(x)
        return self.merge(self.ssm(xs, *self.ssm_parameters(xs)), order, z)

    def forward(self, x):
        return self.out_proj(self.scan(*self.scan_input(x)))


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
        directions, local_window, deformable_points, deformable_tokens, offset_bias,
            channel_attention, offset_kernel_sizes: the paper's ablations (defaults: the official
            model). ``directions``: any subset of 'forward', 'backward' and one of
            'deformable' / 'continuous' / 'local' (the third direction, see
            :class:`DeformableSSM`); ``local_window``: the local scan's window; the four
            switches turn the deformable scan's parts on or off (:class:`DeformableScan`);
            ``offset_kernel_sizes``: the offset network's kernel per stage.
        **official_kwargs: the official ``MM_VSSM`` keywords (``dims``, ``depths``,
            ``ssm_d_state``, ``ssm_ratio``, ``ssm_dt_rank``, ``mlp_ratio``, ``pretrained``, ...),
            so an official backbone dict works with only ``type`` changed.
    """
    head_prefixes = ('classifier.',)
    optional_prefixes = ('outnorm',)
    official_ignored = _IGNORED_OFFICIAL_KEYS
    official_fixed = _FIXED_OFFICIAL_KEYS

    def __init__(self, arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 drop_path_rate=None, with_cp=False, cuda_graph=False, init_cfg=None,
                 directions=OFFICIAL_DIRECTIONS, local_window=7, deformable_points=True,
                 deformable_tokens=True, offset_bias=True, channel_attention=True,
                 offset_kernel_sizes=DeformableScan.kernel_sizes, **official_kwargs):
        cfg = self._resolve_config(arch, drop_path_rate, official_kwargs)
        super().__init__(init_cfg=init_cfg, cuda_graph=cuda_graph, official=official_kwargs)
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
                          dt_rank=cfg['ssm_dt_rank'], mlp_ratio=cfg['mlp_ratio'],
                          directions=check_directions(directions), local_window=local_window)
        if len(offset_kernel_sizes) < len(depths):
            raise ValueError(f'DefMamba: {len(offset_kernel_sizes)} offset_kernel_sizes for '
                             f'{len(depths)} stages')
        deformable = dict(points=deformable_points, tokens=deformable_tokens,
                          offset_bias=offset_bias, channel_attention=channel_attention)
        rates = stochastic_depth_rates(cfg['drop_path_rate'], depths)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            downsample = nn.Sequential(
                Permute(0, 3, 1, 2), nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1),
                Permute(0, 2, 3, 1), LayerNorm(dims[i + 1])) if i < len(depths) - 1 \
                else nn.Identity()
            blocks = [DefMambaBlock(dims[i], i, rates[i][j], deformable=dict(
                deformable, kernel_size=offset_kernel_sizes[i]), **ssm_kwargs)
                for j in range(depth)]
            self.layers.append(DefMambaStage(blocks, downsample))
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', LayerNorm(dims[i]))
        self.apply(self._init_module)

    @classmethod
    def _resolve_config(cls, arch, drop_path_rate, official):
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'DefMamba: arch {arch!r} is not one of {sorted(ARCH_SETTINGS)}')
            arch = ARCH_SETTINGS[arch]
        cfg = dict(dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2, ssm_d_state=16,
                   ssm_ratio=1.0, ssm_dt_rank='auto', mlp_ratio=4.0, in_chans=3,
                   use_checkpoint=False, ssm_drop_rate=0.0, mlp_drop_rate=0.0)
        cfg.update(arch)
        cls._merge_official(cfg, official)
        if cfg['ssm_drop_rate'] or cfg['mlp_drop_rate']:
            raise ValueError('DefMamba: ssm_drop_rate / mlp_drop_rate must be 0 (as released)')
        if drop_path_rate is not None:
            cfg['drop_path_rate'] = drop_path_rate
        cfg['depths'] = list(cfg['depths'])
        cfg['dims'] = stage_dims(cfg['dims'], cfg['depths'], 'DefMamba')
        return cfg