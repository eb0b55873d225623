r"""Selective scan (Mamba S6): one recurrence, two paths.

For batch b, channel d, state n and time t (h_{-1} = 0), with channel d in group g(d) = d // (D / G):

.. math::
    \Delta_t = \mathrm{softplus}(\delta_t + \delta_{bias}),\quad
    h_t = e^{\Delta_t A_{d,n}} h_{t-1} + \Delta_t B_{g,n,t} u_t,\quad
    y_t = \sum_n C_{g,n,t} h_t + D_d u_t \;(\times\, \mathrm{SiLU}(z_t)).

``selective_scan_fn`` has the signature of mamba-ssm's function of the same name. On CUDA,
DefMamba's kind of call (variable B and C, no gate) runs the Triton scan
(``kernels/selective_scan_triton.py``, forward and backward); other CUDA calls go to mamba-ssm's
``selective_scan_cuda`` kernel when it can be imported; everything else (and CUDA without the
kernel, after one warning) goes to ``selective_scan_ref``, an exact PyTorch version that scans in
chunks (about 2*sqrt(L) vectorised steps instead of L). All compute in float32 (float64 stays
float64) and return the dtype of ``u``; the kernels read fp16 / bf16 activations as they are (as
mamba-ssm does under autocast), the torch path upcasts them.
"""
import math
import os
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from ._triton import use_triton
from .tracing import is_exporting

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


def linear_scan(log_a, x, chunk=None):
    """h_t = exp(log_a_t) * h_{t-1} + x_t along the last axis (h_{-1} = 0), log_a <= 0.

    Parallel in chunks: a sequential pass of ``chunk`` steps runs inside all chunks at once, a
    second pass of n_chunks steps carries the state between chunks, and the decay from each
    chunk start (a cumulative product of factors <= 1, so it never overflows) adds the carry.
    Steps run in place and are not differentiable: :class:`_ScanTorch` supplies the adjoint.
    """
    length = x.shape[-1]
    if chunk is None:
        chunk = max(1, math.isqrt(length - 1) + 1)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        log_a, x = F.pad(log_a, (0, pad)), F.pad(x, (0, pad))
    # time-major and contiguous, (chunk, ..., n_chunks): every step is one dense slice
    a = log_a.unflatten(-1, (n_chunks, chunk)).movedim(-1, 0).exp().contiguous()
    h = x.unflatten(-1, (n_chunks, chunk)).movedim(-1, 0)
    h = h.clone(memory_format=torch.contiguous_format)  # never aliases x: the steps are in place
    for t in range(1, chunk):  # scan inside every chunk from a zero state
        h[t].addcmul_(a[t], h[t - 1])
    decay = a.cumprod_(0)  # decay since each chunk start
    carry = torch.zeros_like(h[0, ..., 0])
    carries = torch.empty_like(h[0])
    for j in range(n_chunks):  # state entering chunk j
        carries[..., j] = carry
        carry = torch.addcmul(h[-1, ..., j], decay[-1, ..., j], carry)
    h.addcmul_(decay, carries)
    h = h.movedim(0, -1).flatten(-2)
    return h[..., :length].contiguous() if pad else h


class _ScanTorch(torch.autograd.Function):
    """The recurrence of :func:`selective_scan_ref` with a hand-written adjoint.

    forward(u, dt (b, D, L), A (D, N), B, C (b, G, N, L)) -> (sum_n C h (b, D, L), h_last).
    Backward runs the adjoint recurrence lam_t = C_t dy_t + a_{t+1} lam_{t+1} as one more
    (reversed) scan, instead of differentiating every step of the forward loops.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        batch, dim, length = u.shape
        groups = B.shape[1]
        grouped = (batch, groups, dim // groups, A.shape[1], length)
        log_a = dt[:, :, None] * A[None, :, :, None]  # (b, D, N, L)
        x = (dt * u).view(batch, groups, -1, 1, length) * B[:, :, None]
        h = linear_scan(log_a, x.view_as(log_a))
        y = (h.view(grouped) * C[:, :, None]).sum(3).view(batch, dim, length)
        ctx.save_for_backward(u, dt, A, B, C, h)
        return y, h[..., -1].clone()

    @staticmethod
    def backward(ctx, dy, dlast):
        u, dt, A, B, C, h = ctx.saved_tensors
        batch, dim, length = u.shape
        groups = B.shape[1]
        grouped = (batch, groups, dim // groups, A.shape[1], length)
        g = (dy.reshape(batch, groups, -1, 1, length) * C[:, :, None]).view_as(h)
        g[..., -1] += dlast
        log_a = dt[:, :, None] * A[None, :, :, None]
        # adjoint: reversed scan whose step-t coefficient is a_{t+1}
        log_a_next = F.pad(log_a[..., 1:], (0, 1))
        lam = linear_scan(log_a_next.flip(-1), g.flip(-1)).flip(-1)
        dtu = dt * u
        x = (dtu.view(batch, groups, -1, 1, length) * B[:, :, None]).view_as(h)
        dlog_a = lam * (h - x)  # lam_t * a_t * h_{t-1}
        d_dtu = (lam.view(grouped) * B[:, :, None]).sum(3).view_as(u)  # sum_n lam B
        du = d_dtu * dt if ctx.needs_input_grad[0] else None
        ddt = d_dtu * u + (dlog_a * A[None, :, :, None]).sum(2)
        dA = (dlog_a * dt[:, :, None]).sum((0, 3)) if ctx.needs_input_grad[2] else None
        dB = ((lam * dtu[:, :, None]).view(grouped).sum(2)
              if ctx.needs_input_grad[3] else None)
        dC = ((h * dy[:, :, None]).view(grouped).sum(2)
              if ctx.needs_input_grad[4] else None)
        return du, ddt, dA, dB, dC


def _scan_exported(u, dt, A, B, C):
    """:class:`_ScanTorch`'s forward as one ``scan`` over time, for exported graphs: a single
    loop (an ONNX ``Scan``) of any length, without the chunked scan's size-dependent Python loops,
    cumulative product and in-place writes. Same arguments and results (no backward)."""
    from torch._higher_order_ops.scan import scan
    batch, dim, length = u.shape
    groups = B.shape[1]
    grouped = (batch, groups, dim // groups, A.shape[1], length)
    a = (dt[:, :, None] * A[None, :, :, None]).exp().view(grouped).movedim(-1, 0)
    x = ((dt * u).view(batch, groups, -1, 1, length) * B[:, :, None]).movedim(-1, 0)
    c = C[:, :, None].movedim(-1, 0)  # (L, b, G, 1, N)

    def step(h, inputs):
        a_t, x_t, c_t = inputs
        h = torch.addcmul(x_t, a_t, h)
        return h, (h * c_t).sum(-1)
    last, y = scan(step, x.new_zeros(grouped[:-1]), (a, x, c))
    return y.movedim(0, -1).reshape(batch, dim, length), last.view(batch, dim, -1)


def _grouped(M, batch, dim, length):
    """B or C as (b, G, N, L): (D, N) is G = D constant groups, (b, N, L) one group (views)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], length)
    if M.dim() == 3:
        M = M.unsqueeze(1)
    if dim % M.shape[1]:
        raise ValueError(f'selective scan: {dim} channels are not divisible into '
                         f'{M.shape[1]} groups')
    return M.expand(batch, *M.shape[1:])


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
    scan = _scan_exported if is_exporting() else _ScanTorch.apply
    y, last = scan(u, delta, A.to(cdt), _grouped(B.to(cdt), batch, dim, length),
                   _grouped(C.to(cdt), batch, dim, length))
    if D is not None:
        y = y + D.to(cdt)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(out_dtype)
    return (y, last) if return_last_state else y


# The kernel as two torch custom ops, so that torch.compile keeps it opaque and traces the rest.
# Optional outputs are returned as empty tensors (a custom op cannot return None).
def _empty(ref):
    return ref.new_empty(0)


@torch.library.custom_op('mmdefscan::selective_scan_fwd', mutates_args=())
def _scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
              C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
              delta_bias: Optional[torch.Tensor], delta_softplus: bool
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, x, *rest = _load_kernel().fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out, x, (rest[0] if z is not None else _empty(out))


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    batch, dim, length = u.shape
    chunks = -(-length // 2048)  # the kernel keeps (a, h) pairs per chunk of 2048 steps
    x = u.new_empty(batch, dim, chunks, 2 * A.shape[1], dtype=torch.float32)
    return torch.empty_like(u), x, (torch.empty_like(z) if z is not None else _empty(u))


@torch.library.custom_op('mmdefscan::selective_scan_bwd', mutates_args=())
def _scan_bwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
              C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
              delta_bias: Optional[torch.Tensor], dout: torch.Tensor, x: torch.Tensor,
              out: Optional[torch.Tensor], delta_softplus: bool) -> List[torch.Tensor]:
    grads = _load_kernel().bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, None,
                               delta_softplus, False)
    du, ddelta, dA, dB, dC, dD, ddelta_bias = grads[:7]
    dz = grads[7] if z is not None else None
    return [du, ddelta, dA, dB, dC] + [g if g is not None else _empty(du)
                                       for g in (dD, ddelta_bias, dz)]


@_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, dout, x, out, delta_softplus):
    like = lambda t: torch.empty_like(t) if t is not None else _empty(u)  # noqa: E731
    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), like(D), like(delta_bias), like(z)]


def _scan_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    out, x, out_z = output
    ctx.delta_softplus = delta_softplus
    ctx.has = (D is not None, delta_bias is not None, z is not None)
    # the kernel reads ``out`` only to differentiate the gate z: without z it is not kept alive
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out if z is not None else None)
    ctx.mark_non_differentiable(x)


def _scan_backward(ctx, dout, _dx, dout_z):
    u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
    has_d, has_bias, has_z = ctx.has
    dout = (dout_z if has_z else dout).contiguous()
    du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = _scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, dout, x, out, ctx.delta_softplus)
    return (du, ddelta, dA, dB, dC, dD if has_d else None, dz if has_z else None,
            ddelta_bias if has_bias else None, None)


_scan_fwd.register_autograd(_scan_backward, setup_context=_scan_setup_context)


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    # The kernel reads u, delta, B, C, z in one input dtype (fp32, fp16 or bf16) and always
    # computes in fp32, so low-precision activations go in as they are (half the bytes, no cast
    # copies); A, D and delta_bias are parameters and go in as fp32.
    io = u.dtype if u.dtype in (torch.float16, torch.bfloat16) else torch.float32
    batch, dim, length = u.shape
    Bk, Ck = (_grouped(M, batch, dim, length) for M in (B, C))
    cast = lambda t: None if t is None else t.to(io).contiguous()  # noqa: E731
    fp32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    out, x, out_z = _scan_fwd(cast(u), cast(delta), fp32(A), cast(Bk), cast(Ck), fp32(D), cast(z),
                              fp32(delta_bias), delta_softplus)
    y = out_z if z is not None else out
    if return_last_state:
        return y, x[:, :, -1, 1::2]  # the kernel stores (a, h) pairs per chunk; h is the state
    return y


class _ScanTriton(torch.autograd.Function):
    """The Triton forward and backward; the backward recomputes the states from the inputs, or
    on time-segmented calls from the forward's checkpoints (see ``scan_fwd``)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, segments):
        from .kernels.selective_scan_triton import scan_fwd
        y, ckpt_h = scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, segments=segments,
                             keep_checkpoints=any(ctx.needs_input_grad))
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt_h)
        ctx.delta_softplus, ctx.segments = delta_softplus, segments
        return y

    @staticmethod
    def backward(ctx, dy):
        from .kernels.selective_scan_triton import scan_bwd
        *inputs, ckpt_h = ctx.saved_tensors
        grads = scan_bwd(dy.contiguous(), *inputs, ctx.delta_softplus, segments=ctx.segments,
                         ckpt_h=ckpt_h)
        return (*grads, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
                          segments=None):
    """The Triton scan with :func:`selective_scan_fn`'s arguments, for variable B, C of shape
    (b, N, L) or (b, G, N, L) and no gate; dtypes as the CUDA kernel takes them. Differentiable
    (the Triton backward). ``segments`` fixes the number of time segments of the forward and of
    the backward (tests; by default enough programs to fill the GPU)."""
    io = u.dtype if u.dtype in (torch.float16, torch.bfloat16) else torch.float32
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    fp32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    # the kernels read B, C with any strides but a unit step: views need no copy
    steps = lambda t: t.to(io) if t.stride(-1) == 1 else t.to(io).contiguous()  # noqa: E731
    return _ScanTriton.apply(u.to(io).contiguous(), delta.to(io).contiguous(), fp32(A),
                             steps(B), steps(C), fp32(D), fp32(delta_bias), delta_softplus,
                             segments)


def triton_scan_supported(u, B, C, z, return_last_state) -> bool:
    """Whether the Triton forward covers this call: CUDA with Triton on (``MMDEFSCAN_TRITON`` and
    ``MMDEFSCAN_TRITON_SCAN`` not 0), variable B and C, no gate, no last state, channel groups
    of a multiple of 4 and 2 to 64 states. The one-state scans of Spatial-Mamba's and DAMamba's
    state fusion (``selective_scan_states``) stay on mamba-ssm's kernel, against which the Triton
    forward is not benchmarked for one state."""
    if z is not None or return_last_state or B.dim() < 3 or C.dim() < 3 \
            or os.environ.get('MMDEFSCAN_TRITON_SCAN', '1') == '0' or not use_triton(u):
        return False
    groups = 1 if B.dim() == 3 else B.shape[1]
    return u.shape[1] % (4 * groups) == 0 and 2 <= B.shape[-2] <= 64


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """Selective scan with mamba-ssm's signature. On CUDA where :func:`triton_scan_supported`:
    the Triton scan (forward and backward); otherwise mamba-ssm's kernel when available; else
    (and on CPU, and in exported graphs) the exact torch scan.

    Under autocast the recurrence runs in float32 and the result has the dtype of ``u``.
    """
    with torch.autocast(u.device.type, enabled=False):
        if u.is_cuda and u.dtype != torch.float64 and not is_exporting():
            if triton_scan_supported(u, B, C, z, return_last_state):
                return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus)
            if _load_kernel():
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
