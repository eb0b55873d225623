"""Triton bilinear sampling of DAMamba's dynamic adaptive scan, for inference:

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
def _adaptive_sample_kernel(V, OFF, OUT, HEIGHT, WIDTH, C, G, sob, sol, soc,
                            BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    L = HEIGHT * WIDTH
    b = tl.program_id(2)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tok = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = (ch < C)[:, None] & (tok < L)[None, :]
    group = ch // (C // G)
    offsets = OFF + b * sob + tok[None, :] * sol + (2 * group)[:, None] * soc
    dx = tl.load(offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(offsets + soc, mask=mask, other=0.0).to(tl.float32)
    px = (tok % WIDTH)[None, :].to(tl.float32) + dx
    py = (tok // WIDTH)[None, :].to(tl.float32) + dy
    fx = tl.floor(px)
    fy = tl.floor(py)
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    wx1 = px - fx
    wy1 = py - fy
    plane = V + (b * C + ch[:, None]) * L
    acc = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for a in tl.static_range(2):
        y = y0 + a
        wy = wy1 if a == 1 else 1.0 - wy1
        for e in tl.static_range(2):
            x = x0 + e
            wx = wx1 if e == 1 else 1.0 - wx1
            inside = mask & (y >= 0) & (y < HEIGHT) & (x >= 0) & (x < WIDTH)
            v = tl.load(plane + y * WIDTH + x, mask=inside, other=0.0).to(tl.float32)
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
