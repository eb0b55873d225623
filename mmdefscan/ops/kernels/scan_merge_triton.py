"""Triton kernels that merge DefMamba's three scan directions and apply the gate, in one pass.

forward:  out[b, l, :] = y * SiLU(z[b, l, :]),
          y = (ys[b, 0, :, l] + ys[b, 1, :, L-1-l] + ys[b, 2, :, inv[b, l]]) / 3
          (raster, reversed, deformable order; inv[b, l] = sorted position of token l),
          reading the channel-first scan output and writing channel-last tokens.
backward: d ys of each direction at its own position (a permutation: every slot written once)
          and dz, from the saved y.
PyTorch does this as an un-sort scatter, two adds, a division, a transposing copy, SiLU and a
product: seven kernels and six written maps. Reference: ``mmdefscan.ops.scan_merge``.
"""
import torch
import triton
import triton.language as tl

from .tiles import token_channel_tile

BLOCK_L, BLOCK_D = 64, 32


@triton.jit
def _merge_fwd_kernel(YS, INV, Z, OUT, Y, L, D, szb, szl, szd,
                      SAVE_Y: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b, tok, ch, tmask, mask = token_channel_tile(L, D, BLOCK_L, BLOCK_D)
    inv = tl.load(INV + b * L + tok, mask=tmask, other=0)
    base = YS + b * 3 * D * L + ch[None, :] * L
    y = tl.load(base + tok[:, None], mask=mask, other=0.0).to(tl.float32)
    y += tl.load(base + D * L + (L - 1 - tok)[:, None], mask=mask, other=0.0).to(tl.float32)
    y += tl.load(base + 2 * D * L + inv[:, None], mask=mask, other=0.0).to(tl.float32)
    y = y / 3.0
    z = tl.load(Z + b * szb + tok[:, None] * szl + ch[None, :] * szd, mask=mask,
                other=0.0).to(tl.float32)
    offs = (b * L + tok[:, None]) * D + ch[None, :]
    tl.store(OUT + offs, (y * z * tl.sigmoid(z)).to(OUT.dtype.element_ty), mask=mask)
    if SAVE_Y:
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _merge_bwd_kernel(G, Y, INV, Z, DYS, DZ, L, D, sgb, sgl, sgd, szb, szl, szd,
                      BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b, tok, ch, tmask, mask = token_channel_tile(L, D, BLOCK_L, BLOCK_D)
    g = tl.load(G + b * sgb + tok[:, None] * sgl + ch[None, :] * sgd, mask=mask,
                other=0.0).to(tl.float32)
    z = tl.load(Z + b * szb + tok[:, None] * szl + ch[None, :] * szd, mask=mask,
                other=0.0).to(tl.float32)
    offs = (b * L + tok[:, None]) * D + ch[None, :]
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    tl.store(DZ + offs, (g * y * sig * (1.0 + z * (1.0 - sig))).to(DZ.dtype.element_ty),
             mask=mask)
    dy = (g * z * sig / 3.0).to(DYS.dtype.element_ty)
    inv = tl.load(INV + b * L + tok, mask=tmask, other=0)
    base = DYS + b * 3 * D * L + ch[None, :] * L
    tl.store(base + tok[:, None], dy, mask=mask)
    tl.store(base + D * L + (L - 1 - tok)[:, None], dy, mask=mask)
    tl.store(base + 2 * D * L + inv[:, None], dy, mask=mask)


def _grid(batch, length, dim):
    return (triton.cdiv(length, BLOCK_L), triton.cdiv(dim, BLOCK_D), batch)


def merge_fwd(ys, inv, z, save_y):
    """ys (B, 3, D, L) contiguous, inv (B, L) int32, z (B, L, D) any strides ->
    out (B, L, D) contiguous, y (B, L, D) or None."""
    batch, _, dim, length = ys.shape
    out = torch.empty(batch, length, dim, device=ys.device, dtype=z.dtype)
    y = torch.empty_like(out, dtype=ys.dtype) if save_y else None
    _merge_fwd_kernel[_grid(batch, length, dim)](
        ys, inv, z, out, y if save_y else out, length, dim, *z.stride(),
        SAVE_Y=save_y, BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D, num_warps=4)
    return out, y


def merge_bwd(grad, y, inv, z, ys_dtype):
    """-> d ys (B, 3, D, L) contiguous, dz (B, L, D) contiguous."""
    batch, length, dim = y.shape
    dys = torch.empty(batch, 3, dim, length, device=y.device, dtype=ys_dtype)
    dz = torch.empty(batch, length, dim, device=y.device, dtype=z.dtype)
    _merge_bwd_kernel[_grid(batch, length, dim)](
        grad, y, inv, z, dys, dz, length, dim, *grad.stride(), *z.stride(),
        BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D, num_warps=4)
    return dys, dz
