"""Triton kernel for DefMamba's deformable tokens: bilinear sample of the map at the deformable
points + bilinear sample of the resized rpe table at the key-to-point displacement, summed, in
the deformable token order, in one pass:

    out[b, :, j] = bilinear(x[b], p_t) + bilinear(table, (k_t - p_t) / 2),  t = order[b, j]

(grid_sample semantics: align_corners=True, zero padding; fp32 arithmetic, written in x's
dtype). PyTorch needs an fp32 copy of x, two grid samples, an add, a cast and a gather. The
backward (``_SampleAndSort``) is PyTorch's grid-sampler backward for the map (a Triton backward
with atomic adds into the map gradient is slower: many points share a pixel) and matrix products for
the rpe table (``rpe_table_backward``).
Reference: ``DeformableScan.forward`` without Triton (``mmdefscan/ops/deformable_scan.py``).
"""
import torch
import triton
import triton.language as tl

from .tiles import token_channel_tile

BLOCK_TOKENS, BLOCK_CH = 64, 32


@triton.jit
def _bilinear_setup(px, py, H, W):
    """torch's grid_sampler (bilinear, align_corners=True): corner index, in-bounds masks and
    the fractional parts (ax, ay) and their complements (bx, by)."""
    ix = ((px + 1) / 2) * (W - 1)
    iy = ((py + 1) / 2) * (H - 1)
    fx = tl.floor(ix)
    fy = tl.floor(iy)
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    ax = ix - fx
    bx = (fx + 1) - ix
    ay = iy - fy
    by = (fy + 1) - iy
    in_x0 = (x0 >= 0) & (x0 < W)
    in_x1 = (x0 + 1 >= 0) & (x0 + 1 < W)
    in_y0 = (y0 >= 0) & (y0 < H)
    in_y1 = (y0 + 1 >= 0) & (y0 + 1 < H)
    return y0 * W + x0, ax, bx, ay, by, in_y0 & in_x0, in_y0 & in_x1, in_y1 & in_x0, in_y1 & in_x1


@triton.jit
def _gather4(base, idx, W, m_nw, m_ne, m_sw, m_se, mask):
    v_nw = tl.load(base + idx[:, None], mask=mask & m_nw[:, None], other=0.0).to(tl.float32)
    v_ne = tl.load(base + (idx + 1)[:, None], mask=mask & m_ne[:, None], other=0.0).to(tl.float32)
    v_sw = tl.load(base + (idx + W)[:, None], mask=mask & m_sw[:, None], other=0.0).to(tl.float32)
    v_se = tl.load(base + (idx + W + 1)[:, None], mask=mask & m_se[:, None],
                   other=0.0).to(tl.float32)
    return v_nw, v_ne, v_sw, v_se


@triton.jit
def _token_points(POS, KX, KY, b, tok, tmask, L, W):
    """The point p_t and the table displacement (k_t - p_t) / 2 of tokens tok."""
    px = tl.load(POS + (b * L + tok) * 2, mask=tmask, other=0.0)
    py = tl.load(POS + (b * L + tok) * 2 + 1, mask=tmask, other=0.0)
    kx = tl.load(KX + tok % W, mask=tmask, other=0.0)
    ky = tl.load(KY + tok // W, mask=tmask, other=0.0)
    return px, py, (kx - px) * 0.5, (ky - py) * 0.5


@triton.jit
def _sample_sort_fwd_kernel(X, TABLE, POS, ORDER, KX, KY, OUT, D, H, W, L,
                            BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    b, j, ch, jmask, mask = token_channel_tile(L, D, BLOCK_T, BLOCK_C)  # j: sorted position
    tok = tl.load(ORDER + b * L + j, mask=jmask, other=0)
    px, py, qx, qy = _token_points(POS, KX, KY, b, tok, jmask, L, W)

    idx, ax, bx, ay, by, m_nw, m_ne, m_sw, m_se = _bilinear_setup(px, py, H, W)
    v_nw, v_ne, v_sw, v_se = _gather4(X + b * D * L + ch[None, :] * L, idx, W,
                                      m_nw, m_ne, m_sw, m_se, mask)
    val = (v_nw * (bx * by)[:, None] + v_ne * (ax * by)[:, None]
           + v_sw * (bx * ay)[:, None] + v_se * (ax * ay)[:, None])

    idx, ax, bx, ay, by, m_nw, m_ne, m_sw, m_se = _bilinear_setup(qx, qy, H, W)
    v_nw, v_ne, v_sw, v_se = _gather4(TABLE + ch[None, :] * L, idx, W,
                                      m_nw, m_ne, m_sw, m_se, mask)
    val += (v_nw * (bx * by)[:, None] + v_ne * (ax * by)[:, None]
            + v_sw * (bx * ay)[:, None] + v_se * (ax * ay)[:, None])
    tl.store(OUT + b * D * L + ch[None, :] * L + j[:, None], val.to(OUT.dtype.element_ty),
             mask=mask)


def sample_sort_fwd(x, table, pos, order, key_x, key_y):
    """x (B, D, H, W) contiguous, table (D, H, W) fp32, pos (B, H, W, 2) fp32 (x, y),
    order (B, L), key_x (W,), key_y (H,) fp32 -> tokens (B, D, L) in x's dtype, sorted."""
    batch, dim, height, width = x.shape
    length = height * width
    out = torch.empty(batch, dim, length, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(length, BLOCK_TOKENS), triton.cdiv(dim, BLOCK_CH), batch)
    _sample_sort_fwd_kernel[grid](x, table, pos, order, key_x, key_y, out,
                                  dim, height, width, length,
                                  BLOCK_T=BLOCK_TOKENS, BLOCK_C=BLOCK_CH, num_warps=4)
    return out
