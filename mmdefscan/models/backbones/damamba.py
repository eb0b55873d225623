"""DAMamba (Li et al., arXiv:2502.12627, 2025): a vision Mamba whose scan reads the feature map at
learned, per-pixel offsets (the paper's method section: Dynamic Adaptive Scan with its offset
prediction network and bilinear sampling, the DAMamba block). Keys and outputs equal the
official downstream ``DAMamba`` backbone of github.com/ltzovo/DAMamba @ dc66afb
(``detection/maskrcnn/DAMamba.py``); differences: docs/architecture.md.

Layout is channels-first (B, C, H, W) everywhere. Each stage ends with its LayerNorm
``norm{i+1}``, whose output is both the stage output and the next stage's input.
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from ...ops import DynamicAdaptiveScan, LayerNorm, selective_scan_states
from ...registry import register_backbone
from ..layers import DropPath, batched_matmul, stochastic_depth_rates
from .base import ScanBackbone

# Per variant: what the official DAMamba_tiny / _small / _base pass (drop path: the downstream
# value; the ImageNet yaml files use 0.15 / 0.4 / 0.5).
ARCH_SETTINGS = {
    'tiny': dict(dims=(80, 160, 320, 512), depths=(3, 4, 12, 5), mlp_ratios=(4, 4, 3, 3),
                 head_dim=16, layerscale=(False, False, False, False), drop_path_rate=0.3),
    'small': dict(dims=(96, 192, 384, 512), depths=(4, 8, 20, 6), mlp_ratios=(4, 4, 3, 3),
                  head_dim=16, layerscale=(False, False, True, True), drop_path_rate=0.4),
    'base': dict(dims=(112, 224, 448, 640), depths=(4, 8, 25, 8), mlp_ratios=(4, 4, 3, 4),
                 head_dim=16, layerscale=(False, False, True, True), drop_path_rate=0.6),
}
# The official class's own defaults: an official keyword dict given without ``arch`` is completed
# with these, so ``DAMamba(**official_kwargs)`` is the network the official class builds.
_OFFICIAL_DEFAULTS = dict(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), mlp_ratios=(4, 4, 4, 4),
                          head_dim=24, layerscale=(False, False, False, False), drop_path_rate=0.1)
_ARCH_KEYS = {'dims', 'depths', 'mlp_ratios', 'head_dim', 'layerscale'}
# Official keywords that do not change the backbone (the official code ignores them as well):
# the classifier's, the unused ``drop_rate`` / ``norm_layer``, and the downstream configs' sizes.
_IGNORED_OFFICIAL_KEYS = frozenset({'num_classes', 'head_fn', 'drop_rate', 'norm_layer',
                                    'pretrain_size', 'img_size'})
# Official keywords with a single supported value (the only one the released models use).
_FIXED_OFFICIAL_KEYS = {'act_layer': 'GELU', 'token_mixers': 'DASSM'}
LAYER_SCALE_INIT = 1e-6


def build_norm(cfg, channels):
    """BatchNorm from an mmcv-style ``norm_cfg`` (``type``, ``requires_grad``, layer kwargs).

    ``'SyncBN'`` is ``torch.nn.SyncBatchNorm``: it synchronises only inside a process group of
    more than one process and is plain BatchNorm otherwise (one process, no process group, CPU),
    so the official SyncBN setting trains anywhere; keys are BatchNorm's. ``'BN'`` / ``'BN2d'``
    are ``nn.BatchNorm2d``; other types are built by mmcv (their keys differ from the official).
    """
    cfg = dict(cfg)
    kind = cfg.pop('type')
    requires_grad = cfg.pop('requires_grad', True)
    if kind in ('BN', 'BN2d'):
        layer = nn.BatchNorm2d(channels, **cfg)
    elif kind == 'SyncBN':
        layer = nn.SyncBatchNorm(channels, **cfg)
    else:
        try:
            from mmcv.cnn import build_norm_layer
        except ImportError as err:
            raise ValueError(f"norm_cfg type {kind!r} needs mmcv (built in: 'BN', 'BN2d', "
                             "'SyncBN')") from err
        layer = build_norm_layer(dict(cfg, type=kind), channels)[1]
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return layer


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (official ``LayerNorm`` wrapper, key
    ``norm.*``, eps 1e-6). The Triton norm reads the channel-first map in place and writes the
    same layout (no permuted copies); ``autocast_output`` as :class:`mmdefscan.ops.LayerNorm`'s,
    for norms that feed convolutions."""

    def __init__(self, dim, eps=1e-6, autocast_output=False):
        super().__init__()
        self.norm = LayerNorm(dim, eps=eps, autocast_output=autocast_output)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class ResidualDWConv(nn.Module):
    """x + dwconv(x), computed as ONE depthwise conv whose kernel is ``conv.weight`` plus the
    fixed identity tap ``conv_constant`` (official ``ResDWC``; ``conv_constant`` is a frozen
    parameter of shape (1, 1, k, k), 1 at the centre, and is in the state dict)."""

    def __init__(self, dim, kernel_size=3):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
        identity = torch.zeros(kernel_size * kernel_size)
        identity[kernel_size * kernel_size // 2] = 1.0
        self.conv_constant = nn.Parameter(identity.view(1, 1, kernel_size, kernel_size),
                                          requires_grad=False)

    def forward(self, x):
        return F.conv2d(x, self.conv.weight + self.conv_constant, self.conv.bias,
                        padding=self.conv.padding, groups=self.conv.groups)


class ConvFFN(nn.Module):
    """fc1 (1x1) -> GELU -> ResidualDWConv -> fc2 (1x1) (official ``ConvFFN``, dropout 0)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.conv = ResidualDWConv(hidden, 3)

    def forward(self, x):
        return self.fc2(self.conv(self.act(self.fc1(x))))


class DASSM(nn.Module):
    r"""Token mixer with the dynamic adaptive scan (official ``DASSM``), on z (B, C, H, W):

    x = SiLU(dwconv(in_proj(z))); u = da_scan(z, x) (values x sampled at offsets predicted from
    z), read in raster order (B, C, L); [dt, B, C] = x_proj_weight u; delta = dt_projs_weight dt;
    h = selective_scan_states(u, delta, -exp(A_logs), B, dt_projs_bias) (one state, see
    :mod:`mmdefscan.ops.dynamic_adaptive_scan`); y = C h + Ds u; out = out_proj(out_norm(y)).
    d_state 1, expand 1, no gate, groups = C // head_dim. ``adaptive_scan=False`` (ablation):
    no offset network, u = x read in raster order.
    """

    def __init__(self, dim, head_dim=16, d_conv=3, dt_rank='auto', adaptive_scan=True):
        super().__init__()
        if head_dim < 1 or dim // head_dim < 1:
            raise ValueError(f'DAMamba: head_dim {head_dim} leaves no group in a '
                             f'{dim}-channel stage')
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        # own parameters first: this is the official state-dict order
        self.x_proj_weight = nn.Parameter(torch.empty(self.dt_rank + 2, dim))
        self.dt_projs_weight = nn.Parameter(torch.empty(dim, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(dim))
        self.A_logs = nn.Parameter(torch.empty(dim, 1))
        self.Ds = nn.Parameter(torch.empty(dim))
        self.in_proj = nn.Conv2d(dim, dim, 1, bias=False)
        self.conv2d = nn.Conv2d(dim, dim, d_conv, padding=(d_conv - 1) // 2, groups=dim)
        self.out_norm = LayerNorm2d(dim, autocast_output=True)  # feeds out_proj
        self.out_proj = nn.Conv2d(dim, dim, 1, bias=False)
        self.da_scan = DynamicAdaptiveScan(dim, groups=dim // head_dim) if adaptive_scan \
            else None
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        """The official initialisation (Mamba's; x_proj keeps nn.Linear's default)."""
        bound = self.x_proj_weight.shape[1] ** -0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_projs_weight, -bound, bound)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_logs.zero_()  # log(1): d_state 1
        self.Ds.fill_(1.0)

    def scan_input(self, z):
        """The block's normed map z (B, C, H, W) -> the values x (B, C, H, W) the scan samples."""
        return F.silu(self.conv2d(self.in_proj(z)))

    def ssm_parameters(self, u):
        """The scanned tokens u (B, C, L) -> delta (B, C, L, before the bias and softplus), Bs
        and Cs (B, 1, L)."""
        dts, Bs, Cs = batched_matmul(self.x_proj_weight, u).split([self.dt_rank, 1, 1], dim=1)
        return batched_matmul(self.dt_projs_weight, dts), Bs, Cs

    def read_out(self, u, delta, Bs, Cs):
        """The state scan of u (B, C, L) read out: y (B, C, L) = C h + Ds u."""
        h = selective_scan_states(u, delta, -torch.exp(self.A_logs), Bs, self.dt_projs_bias)[:, :, 0]
        # h is float32 (as the official kernel returns); the sum keeps the official float32
        # under autocast and returns to the model's dtype when the model itself is low precision
        return torch.addcmul(u * self.Ds[:, None], h, Cs).to(torch.promote_types(u.dtype,
                                                                                  self.Ds.dtype))

    def forward(self, z):
        batch, dim, height, width = z.shape
        x = self.scan_input(z)
        u = (self.da_scan(z, x) if self.da_scan is not None else x).reshape(
            batch, dim, height * width)
        y = self.read_out(u, *self.ssm_parameters(u))
        return self.out_proj(self.out_norm(y.reshape(batch, dim, height, width)))


class DAMambaBlock(nn.Module):
    """pos_embed, then x + DropPath(ls1 * token_mixer(norm1(x))), x + DropPath(ls2 * mlp(norm2(x)))
    (official ``Block``; ``norm1`` LayerNorm, ``norm2`` BatchNorm; layer scales only if enabled)."""

    def __init__(self, dim, head_dim, mlp_ratio, drop_path=0.0, layerscale=False,
                 norm_cfg=None, adaptive_scan=True):
        super().__init__()
        if layerscale:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        else:
            self.register_parameter('layer_scale_1', None)
            self.register_parameter('layer_scale_2', None)
        self.token_mixer = DASSM(dim, head_dim, adaptive_scan=adaptive_scan)
        self.norm1 = LayerNorm2d(dim, autocast_output=True)  # feeds in_proj and the offsets
        self.norm2 = build_norm(norm_cfg, dim)
        self.mlp = ConvFFN(dim, int(mlp_ratio * dim))
        self.drop_path = DropPath(drop_path)
        self.pos_embed = ResidualDWConv(dim, 3)

    def forward(self, x):
        x = self.pos_embed(x)
        mixed = self.token_mixer(self.norm1(x))
        if self.layer_scale_1 is not None:
            mixed = self.layer_scale_1[:, None, None] * mixed
        x = self.drop_path.residual(x, mixed)
        mixed = self.mlp(self.norm2(x))
        if self.layer_scale_2 is not None:
            mixed = self.layer_scale_2[:, None, None] * mixed
        return self.drop_path.residual(x, mixed)


class DAMambaStage(nn.Module):
    """``downsample`` (3x3 stride-2 conv + BN; Identity in stage 0), then ``blocks``."""

    def __init__(self, downsample, blocks):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)


@contextlib.contextmanager
def _batch_norm_stats_frozen(module):
    """Run a recomputation without moving BatchNorm running statistics a second time."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training \
                and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


@register_backbone
class DAMamba(ScanBackbone):
    """DAMamba backbone for mmdet / mmseg / mmpretrain.

    Args:
        arch: 'tiny' | 'small' | 'base', or a dict of ``dims``, ``depths``, ``mlp_ratios``,
            ``head_dim``, ``layerscale``. Left at None it is 'tiny', unless official architecture
            keywords are given: then, as in the official class, what they leave out takes the
            official class defaults.
        out_indices: which of the four stage outputs (``norm{i+1}``, NCHW) to return.
        frozen_stages: -1 none; 0 the stem; k the stem and stages 0..k-1 (with their norms).
        drop_path_rate: stochastic depth; defaults to the variant's downstream value.
        with_cp: activation checkpointing per block (BatchNorm statistics move once, as without).
        cuda_graph: replay the training forward + backward from CUDA graphs, captured for the
            first 8 input shapes (an int N: N shapes); see ``mmdefscan/models/cuda_graph.py``.
        norm_cfg: the BatchNorms of stem, downsampling and blocks; official ``SyncBN`` by default,
            which is plain BatchNorm without a process group (see :func:`build_norm`).
        init_cfg: ``dict(type='Pretrained', checkpoint=..., prefix=...)`` loads strictly; official
            ImageNet checkpoints (under ``model``, with ``head.fc``) load as they are.
        adaptive_scan: the dynamic adaptive scan; False (ablation) scans the values in fixed
            raster order, without the offset networks.
        **official_kwargs: the official constructor's keywords (``depths``, ``dims``,
            ``mlp_ratios``, ``head_dim``, ``layerscale``, ``in_chans``, ``drop_rate``,
            ``pretrained``, and the downstream ``pretrain_size`` / ``img_size``); unknown ones
            raise TypeError.
    """
    head_prefixes = ('head.',)
    official_ignored = _IGNORED_OFFICIAL_KEYS
    official_fixed = _FIXED_OFFICIAL_KEYS

    def __init__(self, arch=None, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 drop_path_rate=None, with_cp=False, cuda_graph=False, norm_cfg=None,
                 init_cfg=None, adaptive_scan=True, **official_kwargs):
        cfg = self._resolve_config(arch, drop_path_rate, official_kwargs)
        super().__init__(init_cfg=init_cfg, cuda_graph=cuda_graph, official=official_kwargs)
        dims, depths = cfg['dims'], cfg['depths']
        self.dims = dims
        self.depths = depths
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(len(depths)) for i in self.out_indices):
            raise ValueError(f'DAMamba: out_indices {self.out_indices} not in 0..{len(depths) - 1}')
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.in_channels = cfg['in_chans']
        norm_cfg = dict(type='SyncBN', requires_grad=True) if norm_cfg is None else norm_cfg

        half = dims[0] // 2
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_channels, half, 3, 2, 1), build_norm(norm_cfg, half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), build_norm(norm_cfg, half), nn.GELU(),
            nn.Conv2d(half, dims[0], 3, 2, 1), build_norm(norm_cfg, dims[0]), nn.GELU(),
            nn.Conv2d(dims[0], dims[0], 3, 1, 1), build_norm(norm_cfg, dims[0]))
        rates = stochastic_depth_rates(cfg['drop_path_rate'], depths)
        stages = []
        for i, depth in enumerate(depths):
            downsample = nn.Identity() if i == 0 else nn.Sequential(
                nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1), build_norm(norm_cfg, dims[i]))
            blocks = [DAMambaBlock(dims[i], cfg['head_dim'], cfg['mlp_ratios'][i], rates[i][j],
                                   cfg['layerscale'][i], norm_cfg, adaptive_scan)
                      for j in range(depth)]
            stages.append(DAMambaStage(downsample, blocks))
        self.stages = nn.ModuleList(stages)
        for i, dim in enumerate(dims):
            self.add_module(f'norm{i + 1}', LayerNorm2d(dim))
        self.apply(self._init_module)

    @classmethod
    def _resolve_config(cls, arch, drop_path_rate, official):
        if arch is None:
            arch = dict() if set(official) & _ARCH_KEYS else 'tiny'
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'DAMamba: arch {arch!r} is not one of {sorted(ARCH_SETTINGS)}')
            cfg = dict(ARCH_SETTINGS[arch])
        else:
            bad = sorted(set(arch) - _ARCH_KEYS - {'drop_path_rate'})
            if bad:
                raise ValueError(f'DAMamba: arch dict keys {bad} are not architecture keys')
            cfg = dict(_OFFICIAL_DEFAULTS, **arch)
        cfg['in_chans'] = 3
        cls._merge_official(cfg, official)
        if drop_path_rate is not None:
            cfg['drop_path_rate'] = drop_path_rate

        depths = [int(d) for d in cfg['depths']]
        if not isinstance(cfg['dims'], (list, tuple)):
            raise ValueError(f'DAMamba: dims must be one width per stage, got {cfg["dims"]!r}')
        dims = [int(d) for d in cfg['dims']]
        stages = len(depths)
        mlp_ratios, layerscale = cfg['mlp_ratios'], cfg['layerscale']
        mlp_ratios = list(mlp_ratios) if isinstance(mlp_ratios, (list, tuple)) \
            else [mlp_ratios] * stages
        layerscale = [bool(v) for v in layerscale] if isinstance(layerscale, (list, tuple)) \
            else [bool(layerscale)] * stages
        for name, values in (('dims', dims), ('mlp_ratios', mlp_ratios),
                             ('layerscale', layerscale)):
            if len(values) < stages:
                raise ValueError(f'DAMamba: {len(values)} {name} for {stages} stages')
        head_dim = int(cfg['head_dim'])
        for dim in dims[:stages]:
            groups = dim // head_dim if head_dim > 0 else 0
            if groups < 1 or dim % groups:
                raise ValueError(f'DAMamba: a {dim}-channel stage cannot be split into '
                                 f'{dim} // head_dim {head_dim} = {groups} groups')
        cfg.update(depths=depths, dims=dims[:stages], mlp_ratios=mlp_ratios[:stages],
                   layerscale=layerscale[:stages], head_dim=head_dim)
        return cfg

    @staticmethod
    def _init_module(m):
        """Official downstream init: Linear trunc_normal(0.02) / bias 0; Conv2d
        normal(0, sqrt(2 / fan_out)) / bias 0; LayerNorm and BatchNorm weight 1, bias 0."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _frozen_modules(self, stage):
        if stage < 0:
            return [self.stem]
        return [self.stages[stage], getattr(self, f'norm{stage + 1}')]

    def _run_blocks(self, blocks, x):
        for block in blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = cp.checkpoint(block, x, use_reentrant=False, context_fn=lambda b=block: (
                    contextlib.nullcontext(), _batch_norm_stats_frozen(b)))
            else:
                x = block(x)
        return x

    def forward_eager(self, x):
        x = self.stem(x)
        outs = []
        for i in range(max(self.out_indices) + 1):
            stage = self.stages[i]
            x = self._run_blocks(stage.blocks, stage.downsample(x))
            x = getattr(self, f'norm{i + 1}')(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
