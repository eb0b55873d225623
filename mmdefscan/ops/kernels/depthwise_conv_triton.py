"""Triton weight gradient of a depthwise k x k convolution (stride 1, padding k // 2).

dW[c, i, j] = sum over images and pixels of g[b, c, y, x] * x[b, c, y + i - k//2, x + j - k//2]
(zero padding), db[c] = sum g. A program takes one channel of one image over one tile of pixels:
it loads the tile of g once, reads the k*k shifted tiles of x (from L1) and writes k*k + 1 partial
sums; the partials are summed over images and tiles afterwards. No atomic adds: a Triton depthwise
conv with per-tap atomics lost to PyTorch (docs/performance.md, change 11), and PyTorch's own
weight-gradient kernel re-reads both maps once per weight (9% of a DefMamba-S training step).
Reference: autograd of ``F.conv2d`` (``mmdefscan/ops/depthwise_conv.py``).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _dw_grad_weight_kernel(X, G, PART, C, H, W, n_tw, n_tiles,
                           sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
                           K: tl.constexpr, TAPS: tl.constexpr, TH: tl.constexpr,
                           TW: tl.constexpr):
    """PART[b, tile, c, tap] for tap = i * K + j, and tap K * K = sum of g (the bias)."""
    c, b, tile = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = (tile // n_tw) * TH + tl.arange(0, TH)
    cols = (tile % n_tw) * TW + tl.arange(0, TW)
    inside = (rows < H)[:, None] & (cols < W)[None, :]
    g = tl.load(G + b * sgb + c * sgc + rows[:, None] * sgh + cols[None, :] * sgw, mask=inside,
                other=0.0).to(tl.float32)
    taps = tl.arange(0, TAPS)
    acc = tl.where(taps == K * K, tl.sum(tl.sum(g, 1), 0), 0.0)
    x_plane = X + b * sxb + c * sxc
    for i in tl.static_range(K):
        r = rows + (i - K // 2)
        row_ok = (r >= 0) & (r < H)
        for j in tl.static_range(K):
            q = cols + (j - K // 2)
            ok = row_ok[:, None] & ((q >= 0) & (q < W))[None, :]
            xs = tl.load(x_plane + r[:, None] * sxh + q[None, :] * sxw, mask=ok, other=0.0)
            acc = tl.where(taps == i * K + j, tl.sum(tl.sum(g * xs.to(tl.float32), 1), 0), acc)
    tl.store(PART + ((b * n_tiles + tile) * C + c) * TAPS + taps, acc)


def tile_shape(height, width):
    """(rows, columns, warps) of a program's pixel tile: up to 1024 pixels, as wide as the map
    (to 64), so small maps do not run mostly masked lanes."""
    tw = min(triton.next_power_of_2(width), 64)
    th = min(triton.next_power_of_2(height), max(1024 // tw, 1))
    return th, tw, max(1, min(4, th * tw // 256))


def dw_grad_weight(x, grad, kernel_size):
    """x, grad (B, C, H, W), any strides, same dtype -> (dW (C, 1, k, k), db (C,)) in x's dtype,
    summed in float32."""
    batch, channels, height, width = x.shape
    th, tw, warps = tile_shape(height, width)
    n_th, n_tw = triton.cdiv(height, th), triton.cdiv(width, tw)
    taps = triton.next_power_of_2(kernel_size * kernel_size + 1)
    part = torch.empty(batch * n_th * n_tw, channels, taps, device=x.device, dtype=torch.float32)
    _dw_grad_weight_kernel[(channels, batch, n_th * n_tw)](
        x, grad, part, channels, height, width, n_tw, n_th * n_tw, *x.stride(), *grad.stride(),
        K=kernel_size, TAPS=taps, TH=th, TW=tw, num_warps=warps)
    total = part.sum(0)
    weight = total[:, :kernel_size * kernel_size].reshape(channels, 1, kernel_size, kernel_size)
    return weight.to(x.dtype), total[:, kernel_size * kernel_size].to(x.dtype)
