"""DefMamba's merge of its three scan directions and the output gate.

``merge_scans_gate(ys, order, z)``: ys (B, 3, D, L) the raster, reversed and deformable-order
scan outputs, order (B, L) the deformable order (token ``order[b, j]`` was scanned j-th), z
(B, H, W, D) the gate branch -> (B, H, W, D) = mean of the three in token order * SiLU(z).
On CUDA one Triton kernel each way (``kernels/scan_merge_triton.py``), else ``merge_scans_gate_ref``.
:func:`merge_directions` merges any set of directions (DefMamba's ablations).
"""
import torch
import torch.nn.functional as F

from ._triton import records_grad, use_triton
from .deformable_scan import inverse_order, unsort_tokens


def merge_directions(ys, order, directions=('forward', 'backward', 'permuted')):
    """The scan outputs ys (B, K, D, L) brought back to token order and averaged: (B, D, L).

    ``directions`` names each of the K scans: 'forward' (raster), 'backward' (reversed raster)
    or 'permuted' (token ``order[b, j]`` was scanned j-th)."""
    merged = 0
    for y, direction in zip(ys.unbind(1), directions):
        if direction == 'forward':
            merged = merged + y
        elif direction == 'backward':
            merged = merged + y.flip(-1)
        elif direction == 'permuted':
            merged = merged + unsort_tokens(y, order)
        else:
            raise ValueError(f'merge_directions: unknown direction {direction!r}')
    return merged / float(len(directions))


def merge_scans_gate_ref(ys, order, z, directions=('forward', 'backward', 'permuted')):
    batch, height, width, dim = z.shape
    y = merge_directions(ys, order, directions)
    return y.transpose(1, 2).reshape(batch, height, width, dim).to(z.dtype) * F.silu(z)


class _MergeScansGate(torch.autograd.Function):

    @staticmethod
    def forward(ctx, ys, inv, z, needs_grad):
        from .kernels.scan_merge_triton import merge_fwd
        # y (for dz) is written only when a backward can follow (needs_input_grad is True
        # under no_grad too, so the caller decides)
        out, y = merge_fwd(ys, inv, z.flatten(1, 2), save_y=needs_grad)
        ctx.save_for_backward(y, inv, z)
        ctx.ys_dtype = ys.dtype
        return out.view(z.shape)

    @staticmethod
    def backward(ctx, grad):
        from .kernels.scan_merge_triton import merge_bwd
        y, inv, z = ctx.saved_tensors
        dys, dz = merge_bwd(grad.flatten(1, 2), y, inv, z.flatten(1, 2), ctx.ys_dtype)
        return dys, None, dz.view(z.shape), None


def merge_scans_gate_triton(ys, order, z):
    """The Triton path (any device Triton can run on, including its CPU interpreter)."""
    if ys.shape[1] != 3 or ys.shape[2] != z.shape[-1] or ys.shape[3] != z.shape[1] * z.shape[2]:
        raise ValueError(f'merge_scans_gate: ys {tuple(ys.shape)} does not match z '
                         f'{tuple(z.shape)} (want (B, 3, D, H*W))')
    return _MergeScansGate.apply(ys.contiguous(), inverse_order(order), z, records_grad(ys, z))


def merge_scans_gate(ys, order, z):
    if use_triton(ys):
        return merge_scans_gate_triton(ys, order, z)
    return merge_scans_gate_ref(ys, order, z)
