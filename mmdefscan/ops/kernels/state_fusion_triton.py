"""Triton structure-aware state fusion and read-out in one pass, and its backward (Spatial-Mamba).

    y[b, l, d] = C[b, l] * sum_{r in (1, 3, 5)} alpha_r sum_{i, j in (-1, 0, 1)}
                     K_r[d, i, j] h[b, d, clamp(row + r i), clamp(col + r j)] + D[d] u[b, d, l]

(replicate padding is the clamp), reading the channel-first states and writing channel-last
tokens. PyTorch's evaluation path is a replicate pad, the merged 11 x 11 depthwise conv (its
generic kernel), two products, a sum and a transposing copy; the two are timed side by side by
``tools/analysis/bench_kernels.py --only "state fusion"``. PyTorch's training path is three
replicate pads and three dilated depthwise convs in float32, whose backward is as many pad and
conv gradients (the depthwise weight gradients reduce over the whole batch).
Reference: ``mmdefscan.ops.state_fusion.fuse_read_out_ref``.

Backward, for g = C * dy (channel-first):

* :func:`_fuse_read_out_bwd_kernel`, one pass over the tiles of the forward: g and du = D dy
  stored, the fused states recomputed from the same taps for dC = sum_d dy * fused, and per tile
  the partial sums of dD (dy u) and of every tap's sum g * h(tap), from which dK and dalpha follow
  (summed over the tiles in PyTorch: deterministic, no atomics).
* :func:`_fuse_state_grad_kernel`: the gradient of the replicate-padded state map, pad 5 (the
  widest dilation; pad r of each kernel is the centre of pad 5, since replicate padding is a
  clamp): each padded pixel gathers g at its 27 taps mirrored. Folding the pad back onto the
  border is ``replication_pad2d_backward``.
"""
import torch
import triton
import triton.language as tl

# tiles are (channels, tokens) with the tokens fastest: the tap gathers read runs of tokens of one
# channel (coalesced); the channel-last store goes through a layout conversion. A (tokens,
# channels) tile makes the gathers stride over channels and is several times slower than the
# 11x11 conv it replaces.
BLOCK_D, BLOCK_L = 32, 128


@triton.jit
def _tile(D, L, WIDTH, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's channels and tokens, their masks, and the tokens' rows and columns."""
    ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    tok = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cmask = ch < D
    tmask = tok < L
    return ch, tok, cmask, tmask, cmask[:, None] & tmask[None, :], tok // WIDTH, tok % WIDTH


@triton.jit
def _tap_weight(K1, K3, K5, ALPHA, ch, cmask, r: tl.constexpr, i: tl.constexpr,
                j: tl.constexpr):
    """alpha_r K_r[ch, i, j], float32 (BLOCK_D,)."""
    K = K1 if r == 0 else (K3 if r == 1 else K5)
    w = tl.load(K + ch * 9 + (3 * i + j), mask=cmask, other=0.0).to(tl.float32)
    return tl.load(ALPHA + r).to(tl.float32) * w


@triton.jit
def _tap_states(states, row, col, mask, HEIGHT, WIDTH, r: tl.constexpr, i: tl.constexpr,
                j: tl.constexpr):
    """The states at tap (i, j) of dilation 2r + 1, clamped to the map, float32."""
    rows = tl.minimum(tl.maximum(row + (i - 1) * (2 * r + 1), 0), HEIGHT - 1)
    cols = tl.minimum(tl.maximum(col + (j - 1) * (2 * r + 1), 0), WIDTH - 1)
    return tl.load(states + (rows * WIDTH + cols)[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _fused_states(states, K1, K3, K5, ALPHA, ch, cmask, mask, row, col, HEIGHT, WIDTH, g, S_PART,
                  part, D, TAP_SUMS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """The tile's fused states, float32; with TAP_SUMS also each tap's sum over the tile's
    tokens of g * states(tap), stored in row ``part`` of S_PART (rows of 27 x D)."""
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for r in tl.static_range(3):
        for i in tl.static_range(3):
            for j in tl.static_range(3):
                h = _tap_states(states, row, col, mask, HEIGHT, WIDTH, r, i, j)
                acc += _tap_weight(K1, K3, K5, ALPHA, ch, cmask, r, i, j)[:, None] * h
                if TAP_SUMS:
                    tl.store(S_PART + (part * 27 + 9 * r + 3 * i + j) * D + ch,
                             tl.sum(g * h, axis=1), mask=cmask)
    return acc


@triton.jit
def _fuse_read_out_kernel(H, K1, K3, K5, ALPHA, C, U, DS, OUT, HEIGHT, WIDTH, D, scb, scl,
                          BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    L = HEIGHT * WIDTH
    b = tl.program_id(2)
    ch, tok, cmask, tmask, mask, row, col = _tile(D, L, WIDTH, BLOCK_D, BLOCK_L)
    acc = _fused_states(H + b * D * L + ch[:, None] * L, K1, K3, K5, ALPHA, ch, cmask, mask, row,
                        col, HEIGHT, WIDTH, None, None, 0, D, False, BLOCK_D, BLOCK_L)
    c = tl.load(C + b * scb + tok * scl, mask=tmask, other=0.0).to(tl.float32)
    u = tl.load(U + b * D * L + ch[:, None] * L + tok[None, :], mask=mask, other=0.0)
    ds = tl.load(DS + ch, mask=cmask, other=0.0).to(tl.float32)
    y = acc * c[None, :] + u.to(tl.float32) * ds[:, None]
    tl.store(OUT + (b * L + tok[None, :]) * D + ch[:, None], y.to(OUT.dtype.element_ty), mask=mask)


def fuse_read_out_fwd(h, kernels, alpha, C, u, D, out_dtype):
    """h (B, D, H, W) and u (B, D, L) contiguous, kernels three (D, 1, 3, 3) contiguous, alpha
    (3,), C (B, L) any strides, D (D,) -> (B, H, W, D) contiguous in ``out_dtype``."""
    batch, dim, height, width = h.shape
    out = torch.empty(batch, height, width, dim, device=h.device, dtype=out_dtype)
    grid = (triton.cdiv(height * width, BLOCK_L), triton.cdiv(dim, BLOCK_D), batch)
    _fuse_read_out_kernel[grid](h, *kernels, alpha, C, u, D, out, height, width, dim,
                                *C.stride(), BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L, num_warps=4)
    return out


@triton.jit
def _fuse_read_out_bwd_kernel(GY, H, K1, K3, K5, ALPHA, C, U, DS, G, DU, DC_PART, DD_PART,
                              S_PART, HEIGHT, WIDTH, D, scb, scl,
                              BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    L = HEIGHT * WIDTH
    b = tl.program_id(2)
    ch, tok, cmask, tmask, mask, row, col = _tile(D, L, WIDTH, BLOCK_D, BLOCK_L)
    first = b * D * L + ch[:, None] * L + tok[None, :]  # channel-first (B, D, L)
    gy = tl.load(GY + (b * L + tok[None, :]) * D + ch[:, None], mask=mask, other=0.0)
    gy = gy.to(tl.float32)
    c = tl.load(C + b * scb + tok * scl, mask=tmask, other=0.0).to(tl.float32)
    g = gy * c[None, :]
    tl.store(G + first, g, mask=mask)
    u = tl.load(U + first, mask=mask, other=0.0).to(tl.float32)
    ds = tl.load(DS + ch, mask=cmask, other=0.0).to(tl.float32)
    tl.store(DU + first, (gy * ds[:, None]).to(DU.dtype.element_ty), mask=mask)
    part = b * tl.num_programs(0) + tl.program_id(0)  # this tile's row of the partial sums
    tl.store(DD_PART + part * D + ch, tl.sum(gy * u, axis=1), mask=cmask)
    acc = _fused_states(H + b * D * L + ch[:, None] * L, K1, K3, K5, ALPHA, ch, cmask, mask, row,
                        col, HEIGHT, WIDTH, g, S_PART, part, D, True, BLOCK_D, BLOCK_L)
    dc = tl.sum(gy * acc, axis=0)
    tl.store(DC_PART + (tl.program_id(1) * tl.num_programs(2) + b) * L + tok, dc, mask=tmask)


@triton.jit
def _fuse_state_grad_kernel(G, K1, K3, K5, ALPHA, DHP, HEIGHT, WIDTH, D,
                            BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    PAD: tl.constexpr = 5
    L = HEIGHT * WIDTH
    PW = WIDTH + 2 * PAD
    PL = (HEIGHT + 2 * PAD) * PW
    b = tl.program_id(2)
    ch, tok, cmask, tmask, mask, prow, pcol = _tile(D, PL, PW, BLOCK_D, BLOCK_L)  # padded pixels
    prow -= PAD
    pcol -= PAD
    grads = G + b * D * L + ch[:, None] * L
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for r in tl.static_range(3):
        for i in tl.static_range(3):
            rows = prow - (i - 1) * (2 * r + 1)  # the token whose tap (i, j) reads this pixel
            rmask = tmask & (rows >= 0) & (rows < HEIGHT)
            for j in tl.static_range(3):
                cols = pcol - (j - 1) * (2 * r + 1)
                inside = rmask & (cols >= 0) & (cols < WIDTH)
                g = tl.load(grads + (rows * WIDTH + cols)[None, :],
                            mask=cmask[:, None] & inside[None, :], other=0.0)
                acc += _tap_weight(K1, K3, K5, ALPHA, ch, cmask, r, i, j)[:, None] * g
    tl.store(DHP + b * D * PL + ch[:, None] * PL + tok[None, :], acc, mask=mask)


def fuse_read_out_bwd(dy, h, kernels, alpha, C, u, D):
    """Gradients of :func:`fuse_read_out_fwd` for dy (B, H, W, D) contiguous: dh (float32, like
    h), dkernels (three (D, 1, 3, 3)), dalpha (3,), dC (B, L), du (like u), dD (D,), all
    float32 except du."""
    batch, dim, height, width = h.shape
    length = height * width
    tiles = (triton.cdiv(length, BLOCK_L), triton.cdiv(dim, BLOCK_D), batch)
    f32 = dict(device=h.device, dtype=torch.float32)
    g = torch.empty(batch, dim, length, **f32)
    du = torch.empty_like(u)
    dc_part = torch.empty(tiles[1], batch, length, **f32)
    dd_part = torch.empty(batch * tiles[0], dim, **f32)
    s_part = torch.empty(batch * tiles[0], 27, dim, **f32)
    _fuse_read_out_bwd_kernel[tiles](dy, h, *kernels, alpha, C, u, D, g, du, dc_part, dd_part,
                                     s_part, height, width, dim, *C.stride(),
                                     BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L, num_warps=4)
    pad = 5
    padded = (height + 2 * pad) * (width + 2 * pad)
    dh_padded = torch.empty(batch, dim, height + 2 * pad, width + 2 * pad, **f32)
    grid = (triton.cdiv(padded, BLOCK_L), triton.cdiv(dim, BLOCK_D), batch)
    _fuse_state_grad_kernel[grid](g, *kernels, alpha, dh_padded, height, width, dim,
                                  BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L, num_warps=4)
    dh = torch.ops.aten.replication_pad2d_backward(dh_padded, h, [pad] * 4)
    taps = s_part.sum(0).view(3, 9, dim).transpose(1, 2)  # (3, D, 9): sum of g * h per tap
    weights = torch.stack([k.reshape(dim, 9) for k in kernels]).float()
    dkernels = [(alpha[r].float() * taps[r]).view(dim, 1, 3, 3) for r in range(3)]
    dalpha = (weights * taps).sum((1, 2))
    return dh, dkernels, dalpha, dc_part.sum(0), du, dd_part.sum(0)
