"""Triton LayerNorm over the channels of a strided (B, L, C) view, many tokens per program.

PyTorch's LayerNorm runs one row per thread block, which for the 48-384 channels of these
backbones moves data at a fraction of the memory bandwidth. Here a program normalises a tile of
BLOCK_M tokens x all channels, in any layout (channel-last rows or channel-first maps), and can
fold in a per-(batch, channel) input scale and a GELU (DefMamba's offset network: conv * channel
attention -> LN -> GELU). Statistics in fp32; output in the requested dtype.
Reference: ``mmdefscan.ops.layer_norm.layer_norm_ref``.
"""
import torch
import triton
import triton.language as tl

_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


def _block_m(block_n):
    return max(1, min(256, 4096 // block_n))


@triton.jit
def _ln_fwd_kernel(X, S, W, Bias, Y, Mean, Rstd, L, N, eps,
                   sxb, sxl, sxc, syb, syl, syc,
                   HAS_SCALE: tl.constexpr, GELU: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < L)[:, None] & cmask[None, :]
    x = tl.load(X + b * sxb + rows[:, None] * sxl + cols[None, :] * sxc, mask=mask,
                other=0.0).to(tl.float32)
    if HAS_SCALE:
        x = x * tl.load(S + b * N + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    mean = tl.sum(x, 1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / N + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(Bias + cols, mask=cmask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + bias[None, :]
    if GELU:
        y = 0.5 * y * (1.0 + tl.math.erf(y * _SQRT_HALF))
    tl.store(Y + b * syb + rows[:, None] * syl + cols[None, :] * syc,
             y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + b * L + rows, mean, mask=rows < L)
    tl.store(Rstd + b * L + rows, rstd, mask=rows < L)


@triton.jit
def _ln_bwd_kernel(X, S, W, Bias, DY, Mean, Rstd, DX, DWpart, DBpart, DSpart, L, N,
                   sxb, sxl, sxc, sdb, sdl, sdc, sgb, sgl, sgc,
                   HAS_SCALE: tl.constexpr, GELU: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    rmask = rows < L
    mask = rmask[:, None] & cmask[None, :]
    x_in = tl.load(X + b * sxb + rows[:, None] * sxl + cols[None, :] * sxc, mask=mask,
                   other=0.0).to(tl.float32)
    x = x_in
    if HAS_SCALE:
        s = tl.load(S + b * N + cols, mask=cmask, other=0.0).to(tl.float32)
        x = x_in * s[None, :]
    mean = tl.load(Mean + b * L + rows, mask=rmask, other=0.0)
    rstd = tl.load(Rstd + b * L + rows, mask=rmask, other=0.0)
    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dy = tl.load(DY + b * sgb + rows[:, None] * sgl + cols[None, :] * sgc, mask=mask,
                 other=0.0).to(tl.float32)
    if GELU:  # back through GELU(y), y = xhat * w + bias recomputed
        bias = tl.load(Bias + cols, mask=cmask, other=0.0).to(tl.float32)
        y = xhat * w[None, :] + bias[None, :]
        cdf = 0.5 * (1.0 + tl.math.erf(y * _SQRT_HALF))
        dy = dy * (cdf + y * tl.exp(-0.5 * y * y) * _INV_SQRT_2PI)
    dy = tl.where(mask, dy, 0.0)
    wdy = dy * w[None, :]
    c1 = tl.sum(xhat * wdy, 1) / N
    c2 = tl.sum(wdy, 1) / N
    dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
    part = (b * tl.num_programs(0) + pid) * N + cols
    tl.store(DWpart + part, tl.sum(dy * xhat, 0), mask=cmask)
    tl.store(DBpart + part, tl.sum(dy, 0), mask=cmask)
    if HAS_SCALE:  # x = x_in * s: ds = sum over tokens of dx * x_in, dx_in = dx * s
        tl.store(DSpart + part, tl.sum(tl.where(mask, dx * x_in, 0.0), 0), mask=cmask)
        dx = dx * s[None, :]
    tl.store(DX + b * sdb + rows[:, None] * sdl + cols[None, :] * sdc,
             dx.to(DX.dtype.element_ty), mask=mask)


def _token_layout(t):
    """t, or a contiguous copy of it when dims 1..-2 do not merge into one token axis without a
    copy (a permuted channel-first map does merge)."""
    dims = [(size, stride) for size, stride in zip(t.shape[1:-1], t.stride()[1:-1]) if size != 1]
    mergeable = all(outer[1] == inner[1] * inner[0] for outer, inner in zip(dims, dims[1:]))
    return t if mergeable else t.contiguous()


def _as_blc(t):
    """A (B, L, C) view of t (B, ..., C) from _token_layout ((1, M, C) for rows), its strides."""
    t3 = t.unsqueeze(0) if t.dim() == 2 else t.flatten(1, -2)
    return t3, t3.stride()


def layer_norm_fwd(x, weight, bias, eps, scale=None, gelu=False, out_dtype=None):
    """x (B, ..., C) any strides (normalised over the last dim) -> y like x (same memory layout),
    mean, rstd (B * tokens,) fp32."""
    x = _token_layout(x)
    x3, sx = _as_blc(x)
    batch, length, channels = x3.shape
    y = torch.empty_like(x, dtype=out_dtype or x.dtype)  # same strides as x: y3 is a view
    y3, sy = _as_blc(y)
    mean = torch.empty(batch * length, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_n = triton.next_power_of_2(channels)
    block_m = _block_m(block_n)
    grid = (triton.cdiv(length, block_m), batch)
    _ln_fwd_kernel[grid](x3, scale if scale is not None else x3, weight, bias, y3, mean, rstd,
                         length, channels, eps, *sx, *sy,
                         HAS_SCALE=scale is not None, GELU=gelu,
                         BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)
    return y, mean, rstd


def layer_norm_bwd(dy, x, weight, bias, mean, rstd, scale=None, gelu=False):
    """-> dx (like x), dweight, dbias (fp32), dscale (B, C) fp32 or None."""
    x = _token_layout(x)
    x3, sx = _as_blc(x)
    batch, length, channels = x3.shape
    dy3, sg = _as_blc(_token_layout(dy))
    dx = torch.empty_like(x)
    dx3, sd = _as_blc(dx)
    block_n = triton.next_power_of_2(channels)
    block_m = _block_m(block_n)
    grid = (triton.cdiv(length, block_m), batch)
    parts = torch.empty(3 if scale is not None else 2, batch, grid[0], channels,
                        device=x.device, dtype=torch.float32)
    _ln_bwd_kernel[grid](x3, scale if scale is not None else x3, weight, bias, dy3, mean, rstd,
                         dx3, parts[0], parts[1], parts[-1], length, channels, *sx, *sd, *sg,
                         HAS_SCALE=scale is not None, GELU=gelu,
                         BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)
    dscale = parts[2].sum(1) if scale is not None else None
    return dx, parts[0].sum((0, 1)), parts[1].sum((0, 1)), dscale
