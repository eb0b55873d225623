"""Triton bilinear sampling of DAMamba's dynamic adaptive scan, and its backward:

    out[b, c, i, j] = sum of the four corners of v[b, c] around (i + dy, j + dx), bilinear
                      weights, corners outside the map read 0  (dx, dy of c's group)

read from the channel-first map in its own dtype, in fp32 arithmetic, written in that dtype.
PyTorch's path (``adaptive_sample``) needs an fp32 copy of the map, the grid built and permuted,
``grid_sample`` and a cast back. Tiles are (channels, tokens) with the tokens fastest, so that
neighbouring tokens' corner reads are neighbours too. Reference:
``mmdefscan.ops.dynamic_adaptive_scan.adaptive_sample_ref``.
"""
import torch
import triton
import triton.language as tl

BLOCK_C, BLOCK_L = 16, 128


@triton.jit
def _point(offsets, soc, mask, tok, WIDTH):
    """The sampled point of each token (offsets points at dx, dy is soc further): the top-left
    corner (x0, y0) and the weights of the right and lower corners, float32."""
    px = (tok % WIDTH).to(tl.float32) + tl.load(offsets, mask=mask, other=0.0).to(tl.float32)
    py = (tok // WIDTH).to(tl.float32) + tl.load(offsets + soc, mask=mask,
                                                 other=0.0).to(tl.float32)
    fx = tl.floor(px)
    fy = tl.floor(py)
    return fx.to(tl.int32), fy.to(tl.int32), px - fx, py - fy


@triton.jit
def _corner(x0, y0, wx1, wy1, HEIGHT, WIDTH, a: tl.constexpr, e: tl.constexpr):
    """Corner (y0 + a, x0 + e): its row, column, the two bilinear weights, whether it is inside."""
    y = y0 + a
    x = x0 + e
    wy = wy1 if a == 1 else 1.0 - wy1
    wx = wx1 if e == 1 else 1.0 - wx1
    return y, x, wy, wx, (y >= 0) & (y < HEIGHT) & (x >= 0) & (x < WIDTH)


@triton.jit
def _adaptive_sample_kernel(V, OFF, OUT, HEIGHT, WIDTH, C, G, sob, sol, soc,
                            BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    L = HEIGHT * WIDTH
    b = tl.program_id(2)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tok = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = (ch < C)[:, None] & (tok < L)[None, :]
    group = ch // (C // G)
    offsets = OFF + b * sob + tok[None, :] * sol + (2 * group)[:, None] * soc
    x0, y0, wx1, wy1 = _point(offsets, soc, mask, tok[None, :], WIDTH)
    plane = V + (b * C + ch[:, None]) * L
    acc = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for a in tl.static_range(2):
        for e in tl.static_range(2):
            y, x, wy, wx, inside = _corner(x0, y0, wx1, wy1, HEIGHT, WIDTH, a, e)
            v = tl.load(plane + y * WIDTH + x, mask=mask & inside, other=0.0).to(tl.float32)
            acc += wy * wx * v
    tl.store(OUT + (b * C + ch[:, None]) * L + tok[None, :], acc.to(OUT.dtype.element_ty),
             mask=mask)


def adaptive_sample_fwd(values, offsets, groups):
    """values (B, C, H, W) contiguous, offsets (B, H, W, 2G) any strides -> like values."""
    batch, channels, height, width = values.shape
    out = torch.empty_like(values)
    off = offsets.flatten(1, 2)  # (B, L, 2G): a view for any strides that merge H and W
    grid = (triton.cdiv(height * width, BLOCK_L), triton.cdiv(channels, BLOCK_C), batch)
    _adaptive_sample_kernel[grid](values, off, out, height, width, channels, groups,
                                  *off.stride(), BLOCK_C=BLOCK_C, BLOCK_L=BLOCK_L, num_warps=4)
    return out


@triton.jit
def _adaptive_sample_bwd_kernel(V, OFF, G, DV, DOFF, HEIGHT, WIDTH, C, CPG, sob, sol, soc,
                                BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Gradients of one (channels, tokens) tile, its channels in one group: dv += w g at the
    four corners (atomic adds: neighbouring points share corners), and the tile's share of the
    group's (dx, dy) = sum over its channels of g times the corner differences."""
    L = HEIGHT * WIDTH
    b = tl.program_id(2)
    first = tl.program_id(1) * BLOCK_C
    ch = first + tl.arange(0, BLOCK_C)
    tok = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    tmask = tok < L
    mask = (ch < C)[:, None] & tmask[None, :]
    group = first // CPG
    offsets = OFF + b * sob + tok * sol + 2 * group * soc
    x0, y0, wx1, wy1 = _point(offsets, soc, tmask, tok, WIDTH)
    rows = (b * C + ch[:, None]) * L
    g = tl.load(G + rows + tok[None, :], mask=mask, other=0.0).to(tl.float32)
    grad_x = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    grad_y = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for a in tl.static_range(2):
        for e in tl.static_range(2):
            y, x, wy, wx, inside = _corner(x0, y0, wx1, wy1, HEIGHT, WIDTH, a, e)
            corner = mask & inside[None, :]
            at = rows + (y * WIDTH + x)[None, :]
            v = tl.load(V + at, mask=corner, other=0.0).to(tl.float32)
            tl.atomic_add(DV + at, g * (wy * wx)[None, :], mask=corner)
            # d(wx)/dpx = +1 for the right corner, -1 for the left; likewise in y
            grad_x += v * (wy if e == 1 else -wy)[None, :]
            grad_y += v * (wx if a == 1 else -wx)[None, :]
    part = DOFF + ((tl.program_id(1) % (CPG // BLOCK_C)) * tl.num_programs(2) + b) * L * 2 * (
        C // CPG) + tok * 2 * (C // CPG) + 2 * group
    tl.store(part, tl.sum(g * grad_x, axis=0), mask=tmask)
    tl.store(part + 1, tl.sum(g * grad_y, axis=0), mask=tmask)


def adaptive_sample_bwd(grad, values, offsets, groups):
    """Gradients of :func:`adaptive_sample_fwd` for grad (B, C, H, W) contiguous: d values (in
    values' dtype) and d offsets (B, H, W, 2G) in offsets' dtype. Tiles hold channels of one
    group, so the offset gradients are per-tile sums, added up in PyTorch (no atomics there)."""
    batch, channels, height, width = values.shape
    per_group = channels // groups
    block_c = min(BLOCK_C, per_group & -per_group)  # the largest power of 2 dividing it
    off = offsets.flatten(1, 2)
    dv = torch.zeros(values.shape, device=values.device, dtype=torch.float32)
    doff = torch.empty(per_group // block_c, batch, height * width, 2 * groups,
                       device=values.device, dtype=torch.float32)
    grid = (triton.cdiv(height * width, BLOCK_L), channels // block_c, batch)
    _adaptive_sample_bwd_kernel[grid](values, off, grad, dv, doff, height, width, channels,
                                      per_group, *off.stride(), BLOCK_C=block_c,
                                      BLOCK_L=BLOCK_L, num_warps=4)
    return (dv.to(values.dtype),
            doff.sum(0).view(batch, height, width, 2 * groups).to(offsets.dtype))
