r"""Spatial-Mamba's operators: the state-returning selective scan and structure-aware state fusion.

**State scan.** The selective scan of :mod:`.selective_scan` without the read-out: for batch b,
channel d, state n and token t (raster order, h_{-1} = 0)

.. math::
    \Delta_t = \mathrm{softplus}(\delta_t + \delta_{bias,d}),\qquad
    h_{t,n} = e^{\Delta_t A_{d,n}}\, h_{t-1,n} + \Delta_t B_{n,t}\, u_t ,

and the states h themselves are returned, as the official ``selective_scan_cuda_oflex_rh``
kernel does (no C, no D). It runs on the shared :func:`selective_scan_fn` (mamba-ssm kernel on
CUDA, exact PyTorch scan elsewhere): state n of every channel is one channel of a standard scan
with C = 1 and D = none, so its output y_t equals h_t. Like the official kernel it computes and
returns float32 for any floating input (float64 stays float64), also under autocast.

**State fusion.** The hidden states of neighbouring pixels are mixed per channel by three dilated
3x3 depthwise kernels k_1, k_3, k_5 (official ``kernel_3``, ``kernel_3_1``, ``kernel_3_2``) with
weights alpha, on the replicate-padded state map (pad_r repeats the border r times):

.. math::
    \hat h = \alpha_0\, k_1 \ast_1 \mathrm{pad}_1(h) + \alpha_1\, k_3 \ast_3 \mathrm{pad}_3(h)
           + \alpha_2\, k_5 \ast_5 \mathrm{pad}_5(h)
         = M \ast \mathrm{pad}_5(h),

where :math:`\ast_r` is a depthwise convolution with dilation r and M the 11x11 kernel holding
the three dilated kernels around one centre (the centre tap is the sum of the three centres).
Replicate padding clamps indices, so both forms are the same function. Training uses the three
dilated convolutions, evaluation the fused kernel (as the official ``dwconv2d`` path), but M is
rebuilt from the current parameters on every evaluation forward: it never goes stale after an
optimiser step or ``load_state_dict`` (the official cache does), and it can be back-propagated.

**Read-out.** :meth:`StateFusion.read_out` returns y = C * fused(h) + D * u as channel-last tokens.
For float32 states on CUDA without autograd it is one Triton kernel
(``kernels/state_fusion_triton.py``: the clamped taps read the states directly, no padded copy,
no 11x11 conv, no transposing copy); with ``TRAIN_KERNEL`` set, also under autograd, with a Triton
backward (two kernels instead of the three pads' and dilated convs' gradients); otherwise
:func:`fuse_read_out_ref`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from ._triton import records_grad, use_triton
from .selective_scan import _compute_dtype, selective_scan_fn

# Whether calls that autograd records take the Triton read-out and its backward (else the PyTorch
# path's pads and dilated convs). Off until its speed is measured on a GPU: ``benchmark.py --ab
# mmdefscan.ops.state_fusion.TRAIN_KERNEL=True`` compares the two (docs/benchmark.md).
TRAIN_KERNEL = False


def selective_scan_states(u, delta, A, B, delta_bias=None, delta_softplus=True):
    """Hidden states of the selective scan (the official "rh" kernel; see the module docstring).

    Args:
        u, delta: (b, D, L).
        A: (D, N), usually ``-exp(A_logs)``.
        B: (b, N, L), shared by all channels.
        delta_bias: (D,) or None.

    Returns:
        h: (b, D, N, L) in float32 (float64 for float64 ``u``).
    """
    cdt = _compute_dtype(u.dtype)
    batch, dim, length = u.shape
    n_state = A.shape[1]
    if B.shape != (batch, n_state, length):
        raise ValueError(f'selective_scan_states: B must be {(batch, n_state, length)}, '
                         f'got {tuple(B.shape)}')
    with torch.autocast(u.device.type, enabled=False):
        u, delta, B = u.to(cdt), delta.to(cdt), B.to(cdt)
        A = A.to(cdt)
        if delta_bias is not None:
            delta_bias = delta_bias.to(cdt)
        if n_state > 1:  # state n of channel d is channel n * D + d of one scan, in group n
            u = u.repeat(1, n_state, 1)
            delta = delta.repeat(1, n_state, 1)
            A = A.t().reshape(n_state * dim, 1)
            if delta_bias is not None:
                delta_bias = delta_bias.repeat(n_state)
        groups = B.unsqueeze(2)  # (b, G = N, 1, L)
        ones = torch.ones((), dtype=cdt, device=u.device).expand_as(groups)
        h = selective_scan_fn(u, delta, A, groups, ones, D=None, z=None, delta_bias=delta_bias,
                              delta_softplus=delta_softplus)
    return h.view(batch, n_state, dim, length).transpose(1, 2)


@MODELS.register_module()
class SelectiveScanStates(nn.Module):
    """Module form of :func:`selective_scan_states` (no parameters)."""

    def __init__(self, delta_softplus: bool = True):
        super().__init__()
        self.delta_softplus = delta_softplus

    def forward(self, u, delta, A, B, delta_bias=None):
        return selective_scan_states(u, delta, A, B, delta_bias, self.delta_softplus)


@MODELS.register_module()
class StateFusion(nn.Module):
    """Structure-aware state fusion (see the module docstring for the equation).

    Args:
        dim: channels of the state map (B, dim, H, W).
        dilations: one dilated 3x3 kernel per entry (official: 1, 3, 5).

    Parameters ``kernel_3``, ``kernel_3_1``, ``kernel_3_2``, ... (dim, 1, 3, 3), one per dilation,
    and ``alpha`` (one weight per dilation), all initialised to one (official names and
    initialisation).
    """

    official_dilations = (1, 3, 5)

    def __init__(self, dim: int, dilations=official_dilations):
        super().__init__()
        self.dim = dim
        self.dilations = tuple(int(d) for d in dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f'StateFusion: dilations {dilations} must be positive integers')
        self.kernel_names = tuple('kernel_3' + (f'_{i}' if i else '')
                                  for i in range(len(self.dilations)))
        for name in self.kernel_names:
            self.register_parameter(name, nn.Parameter(torch.ones(dim, 1, 3, 3)))
        self.alpha = nn.Parameter(torch.ones(len(self.dilations)))

    def kernels(self):
        return tuple(getattr(self, name) for name in self.kernel_names)

    def merged_kernel(self):
        """The fused (dim, 1, 11, 11) kernel M of the current parameters (differentiable)."""
        size = 2 * max(self.dilations) + 1
        centre = size // 2
        merged = self.kernel_3.new_zeros(self.dim, 1, size, size)
        for weight, kernel, dilation in zip(self.alpha, self.kernels(), self.dilations):
            taps = slice(centre - dilation, centre + dilation + 1, dilation)
            merged[:, :, taps, taps] += weight * kernel
        return merged

    def forward(self, h):
        if self.training:
            out = 0
            for weight, kernel, dilation in zip(self.alpha, self.kernels(), self.dilations):
                padded = F.pad(h, (dilation,) * 4, mode='replicate')
                out = out + weight * F.conv2d(padded, kernel.to(h.dtype), dilation=dilation,
                                              groups=self.dim)
            return out
        pad = max(self.dilations)
        return F.conv2d(F.pad(h, (pad,) * 4, mode='replicate'),
                        self.merged_kernel().to(h.dtype), groups=self.dim)

    def read_out(self, h, C, u, D):
        """Channel-last y = C * self(h) + D * u (see the module docstring).

        Args:
            h: states (B, dim, H, W); C: (B, 1, H*W) or (B, H*W); u: (B, dim, H*W); D: (dim,).

        Returns:
            (B, H, W, dim) in the promoted dtype of h, C, u and D (float32 for float32 states).
        """
        batch, dim, height, width = h.shape
        C = C.reshape(batch, height * width)
        # the Triton read-out holds the official three dilations
        if (h.dtype != torch.float32 or not use_triton(h)
                or self.dilations != self.official_dilations):
            return fuse_read_out_ref(self, h, C, u, D)
        out_dtype = torch.promote_types(torch.promote_types(h.dtype, C.dtype),
                                        torch.promote_types(u.dtype, D.dtype))
        inputs = (h.contiguous(), C, u.contiguous(), D, self.alpha,
                  *[k.contiguous() for k in self.kernels()])
        if records_grad(*inputs):
            if not TRAIN_KERNEL:
                return fuse_read_out_ref(self, h, C, u, D)
            return _FuseReadOut.apply(out_dtype, *inputs)
        from .kernels.state_fusion_triton import fuse_read_out_fwd
        return fuse_read_out_fwd(inputs[0], inputs[5:], self.alpha, C, inputs[2], D, out_dtype)

    def extra_repr(self):
        return f'dim={self.dim}, dilations={self.dilations}'


class _FuseReadOut(torch.autograd.Function):
    """The Triton read-out with its Triton backward (``kernels/state_fusion_triton.py``)."""

    @staticmethod
    def forward(ctx, out_dtype, h, C, u, D, alpha, *kernels):
        from .kernels.state_fusion_triton import fuse_read_out_fwd
        ctx.save_for_backward(h, C, u, D, alpha, *kernels)
        return fuse_read_out_fwd(h, kernels, alpha, C, u, D, out_dtype)

    @staticmethod
    def backward(ctx, dy):
        from .kernels.state_fusion_triton import fuse_read_out_bwd
        h, C, u, D, alpha, *kernels = ctx.saved_tensors
        dh, dkernels, dalpha, dC, du, dD = fuse_read_out_bwd(dy.contiguous(), h, kernels, alpha,
                                                             C, u, D)
        return (None, dh, dC.to(C.dtype), du, dD.to(D.dtype), dalpha.to(alpha.dtype),
                *[dk.to(k.dtype) for dk, k in zip(dkernels, kernels)])


def fuse_read_out_ref(fusion, h, C, u, D):
    """PyTorch :meth:`StateFusion.read_out`: (B, H, W, dim) = C * fusion(h) + D * u; without a
    fusion (None) Mamba's own read-out C * h + D * u."""
    batch, dim, height, width = h.shape
    fused = fusion(h) if fusion is not None else h
    y = torch.addcmul(u * D[:, None], fused.flatten(2), C.reshape(batch, 1, -1))
    return y.transpose(1, 2).reshape(batch, height, width, dim)
