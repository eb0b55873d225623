r"""Selective scan (Mamba S6): one recurrence, two paths.

For batch b, channel d, state n and time t (h_{-1} = 0), with channel d in group g(d) = d // (D / G):

.. math::
    \Delta_t = \mathrm{softplus}(\delta_t + \delta_{bias}),\quad
    h_t = e^{\Delta_t A_{d,n}} h_{t-1} + \Delta_t B_{g,n,t} u_t,\quad
    y_t = \sum_n C_{g,n,t} h_t + D_d u_t \;(\times\, \mathrm{SiLU}(z_t)).

``selective_scan_fn`` has the signature of mamba-ssm's function of the same name. CUDA tensors go
to mamba-ssm's ``selective_scan_cuda`` kernel when it can be imported; everything else (and CUDA
without the kernel, after one warning) goes to ``selective_scan_ref``, an exact PyTorch version
that scans in chunks (about 2*sqrt(L) vectorised steps instead of L). Both compute in float32
(float64 stays float64) and return the dtype of ``u``.
"""
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS

_KERNEL = None  # None: not tried yet; False: not importable; else the module


def _load_kernel():
    global _KERNEL
    if _KERNEL is None:
        try:
            import selective_scan_cuda  # mamba-ssm's compiled kernel
            _KERNEL = selective_scan_cuda
        except ImportError as err:
            warnings.warn(f'mamba-ssm selective_scan_cuda is not importable ({err}); CUDA tensors '
                          'use the slower PyTorch scan. Install with `pip install -e .[cuda]`.')
            _KERNEL = False
    return _KERNEL


def kernel_available() -> bool:
    """True when mamba-ssm's CUDA kernel can be used (warns once if not)."""
    return bool(_load_kernel())


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(M, batch, dim, length):
    """Expand B or C, given as (D, N), (b, N, L) or (b, G, N, L), to (b, D, N, L)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], length)
    if M.dim() == 3:
        M = M.unsqueeze(1)
    groups = M.shape[1]
    if dim % groups:
        raise ValueError(f'selective scan: {dim} channels are not divisible into {groups} groups')
    M = M.unsqueeze(2).expand(batch, groups, dim // groups, *M.shape[2:])
    return M.reshape(batch, dim, *M.shape[3:])


def linear_scan(log_a, b, chunk=None):
    """h_t = exp(log_a_t) * h_{t-1} + b_t along the last axis (h_{-1} = 0), log_a <= 0.

    Parallel in chunks: a sequential pass of ``chunk`` steps runs inside all chunks at once, a
    second pass of n_chunks steps carries the state between chunks, and the decay from each
    chunk start (exp of a cumulative sum of log_a <= 0, so it never overflows) adds the carry.
    Every step is plain autograd-friendly tensor math.
    """
    length = b.shape[-1]
    if chunk is None:
        chunk = max(1, math.isqrt(length - 1) + 1)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        log_a = F.pad(log_a, (0, pad))
        b = F.pad(b, (0, pad))
    # time-major: (chunk, ..., n_chunks) so each step reads a contiguous slice
    log_a = log_a.unflatten(-1, (n_chunks, chunk)).movedim(-1, 0)
    b = b.unflatten(-1, (n_chunks, chunk)).movedim(-1, 0)
    # unbind (not indexing) keeps backward linear: its gradient is one stack, not a zero-filled
    # full-size tensor per step
    h = torch.zeros_like(b[0])
    local = []
    for a_t, b_t in zip(log_a.exp().unbind(0), b.unbind(0)):
        h = a_t * h + b_t
        local.append(h)
    local = torch.stack(local)  # (chunk, ..., n_chunks): scan of each chunk from a zero state
    decay = log_a.cumsum(0).exp()  # (chunk, ..., n_chunks): decay since the chunk start
    carry = torch.zeros_like(b[0][..., 0])
    carries = []
    for decay_c, local_c in zip(decay[-1].unbind(-1), local[-1].unbind(-1)):
        carries.append(carry)
        carry = decay_c * carry + local_c
    h = local + decay * torch.stack(carries, -1)
    h = h.movedim(0, -1).flatten(-2)
    return h[..., :length] if pad else h


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Exact PyTorch selective scan (see the module docstring); same signature as mamba-ssm.

    u, delta, z: (b, D, L); A: (D, N); B, C: (D, N), (b, N, L) or (b, G, N, L); D, delta_bias: (D,).
    Returns y (b, D, L) in u's dtype, and the last state (b, D, N) if ``return_last_state``.
    """
    out_dtype = u.dtype
    cdt = _compute_dtype(u.dtype)
    batch, dim, length = u.shape
    u = u.to(cdt)
    delta = delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20: identity above, as in the kernels
    A = A.to(cdt)
    Bx = _per_channel(B.to(cdt), batch, dim, length)
    Cx = _per_channel(C.to(cdt), batch, dim, length)
    log_a = delta[:, :, None, :] * A[None, :, :, None]  # (b, D, N, L)
    h = linear_scan(log_a, (delta * u)[:, :, None, :] * Bx)
    y = (h * Cx).sum(2)
    if D is not None:
        y = y + D.to(cdt)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(out_dtype)
    return (y, h[..., -1]) if return_last_state else y


class _SelectiveScanCuda(torch.autograd.Function):
    """mamba-ssm's kernel; B and C arrive as (b, G, N, L) in u's dtype."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        kernel = _load_kernel()
        out, x, *rest = kernel.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.has_z = z is not None
        out_z = rest[0] if ctx.has_z else None
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
        ctx.mark_non_differentiable(x)
        return (out_z if ctx.has_z else out), x

    @staticmethod
    def backward(ctx, dout, _dx):
        u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        dout = dout.contiguous()
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = _load_kernel().bwd(
            u, delta, A, B, C, D, z, delta_bias, dout, x, out, None, ctx.delta_softplus, False)
        dz = rest[0] if ctx.has_z else None
        return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz,
                ddelta_bias if delta_bias is not None else None, None)


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    out_dtype = u.dtype
    cdt = torch.float32  # the kernel computes in fp32 anyway; feeding fp32 keeps autocast exact
    batch, dim, length = u.shape
    prep = [t.to(cdt).contiguous() if t is not None else None for t in (u, delta, z)]
    Bk, Ck = (M[None, :, :, None].expand(batch, dim, M.shape[1], length) if M.dim() == 2
              else (M.unsqueeze(1) if M.dim() == 3 else M) for M in (B, C))
    y, x = _SelectiveScanCuda.apply(
        prep[0], prep[1], A.float().contiguous(), Bk.to(cdt).contiguous(),
        Ck.to(cdt).contiguous(), None if D is None else D.float().contiguous(), prep[2],
        None if delta_bias is None else delta_bias.float().contiguous(), delta_softplus)
    y = y.to(out_dtype)
    if return_last_state:
        return y, x[:, :, -1, 1::2]  # the kernel stores (a, h) pairs per chunk; h is the state
    return y


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """Selective scan with mamba-ssm's signature; kernel on CUDA when available, else exact torch.

    Under autocast the scan runs in float32 and the result has the dtype of ``u``.
    """
    with torch.autocast(u.device.type, enabled=False):
        if u.is_cuda and u.dtype != torch.float64 and _load_kernel():
            return _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                        return_last_state)
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state)


@MODELS.register_module()
class SelectiveScan(nn.Module):
    """Module form of :func:`selective_scan_fn` (no parameters), for configs and composition."""

    def __init__(self, delta_softplus: bool = True):
        super().__init__()
        self.delta_softplus = delta_softplus

    def forward(self, u, delta, A, B, C, D=None, z=None, delta_bias=None):
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, self.delta_softplus)
