"""Triton depthwise 2-D convolution: stride 1, zero padding k // 2, an odd k x k kernel per
channel, NCHW maps. With p = k // 2,

    y[b, c, h, w] = bias[c] + sum_{i, j < k} w[c, i, j] x[b, c, h + i - p, w + j - p]
    dx[b, c, h, w] = sum_{i, j < k} w[c, k-1-i, k-1-j] dy[b, c, h + i - p, w + j - p]
    dw[c, i, j] = sum_{b, h, w} dy[b, c, h, w] x[b, c, h + i - p, w + j - p],  dbias[c] = sum dy

One program per (batch x channel plane, tile of rows x columns); every tap is a masked load of
the shifted tile (from L1 after the first). The weight gradient is one partial sum per program
and tap, summed over the programs by PyTorch (no atomics: the same result every run).
PyTorch's own depthwise kernels are the reference (``F.conv2d(..., groups=C)``); their weight
gradient is slow on DefMamba's large Mask R-CNN maps (compare with
``tools/analysis/bench_kernels.py --map 200 336 --batch 2 --only "depthwise conv"``).
"""
import torch
import triton
import triton.language as tl

TILE_ELEMENTS = 1024  # rows x columns of a program, 4 warps


def tile_shape(width):
    """(rows, columns) of a tile: the columns cover the width up to 128 (coalesced rows)."""
    block_w = min(max(triton.next_power_of_2(width), 16), 128)
    return TILE_ELEMENTS // block_w, block_w


@triton.jit
def _tile(HEIGHT, WIDTH, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Plane index, offset of the plane, rows and columns of this program's tile."""
    plane = tl.program_id(0)
    tiles_w = tl.cdiv(WIDTH, BLOCK_W)
    tile = tl.program_id(1)
    rows = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    return plane, plane.to(tl.int64) * HEIGHT * WIDTH, rows, cols


@triton.jit
def _shifted(PTR, rows, cols, di, dj, HEIGHT, WIDTH):
    """The tile moved by (di, dj), zero outside the map, in float32."""
    r = rows + di
    c = cols + dj
    mask = ((r >= 0) & (r < HEIGHT))[:, None] & ((c >= 0) & (c < WIDTH))[None, :]
    return tl.load(PTR + r[:, None] * WIDTH + c[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dwconv_kernel(X, WEIGHT, BIAS, OUT, CHANNELS, HEIGHT, WIDTH, K: tl.constexpr,
                   FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_W: tl.constexpr):
    """y = x * w (+ bias); with FLIP the taps are read mirrored: dx from dy."""
    plane, base, rows, cols = _tile(HEIGHT, WIDTH, BLOCK_H, BLOCK_W)
    taps = WEIGHT + (plane % CHANNELS) * K * K
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            tap = (K - 1 - i) * K + (K - 1 - j) if FLIP else i * K + j
            weight = tl.load(taps + tap).to(tl.float32)
            acc += weight * _shifted(X + base, rows, cols, i - K // 2, j - K // 2, HEIGHT, WIDTH)
    if HAS_BIAS:
        acc += tl.load(BIAS + plane % CHANNELS).to(tl.float32)
    mask = (rows < HEIGHT)[:, None] & (cols < WIDTH)[None, :]
    tl.store(OUT + base + rows[:, None] * WIDTH + cols[None, :], acc.to(OUT.dtype.element_ty),
             mask=mask)


@triton.jit
def _dwconv_wgrad_kernel(X, DY, PARTIAL, HEIGHT, WIDTH, K: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_W: tl.constexpr):
    """PARTIAL[plane, tile, i * K + j] = sum over the tile of dy * x shifted by (i, j);
    PARTIAL[plane, tile, K * K] = sum of dy (the bias gradient)."""
    plane, base, rows, cols = _tile(HEIGHT, WIDTH, BLOCK_H, BLOCK_W)
    dy = _shifted(DY + base, rows, cols, 0, 0, HEIGHT, WIDTH)
    out = PARTIAL + (plane.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * (K * K + 1)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            x = _shifted(X + base, rows, cols, i - K // 2, j - K // 2, HEIGHT, WIDTH)
            tl.store(out + i * K + j, tl.sum(tl.sum(x * dy, 1), 0))
    tl.store(out + K * K, tl.sum(tl.sum(dy, 1), 0))


def tiles_per_plane(height, width):
    """Programs per plane, and the tile's rows and columns."""
    block_h, block_w = tile_shape(width)
    return triton.cdiv(height, block_h) * triton.cdiv(width, block_w), block_h, block_w


def _launch(kernel, planes, height, width, *args, **constants):
    tiles, block_h, block_w = tiles_per_plane(height, width)
    kernel[(planes, tiles)](*args, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=4, **constants)


def dwconv_fwd(x, weight, bias, out_dtype, flip=False):
    """x (B, C, H, W) contiguous, weight (C, 1, k, k) contiguous, bias (C,) or None ->
    (B, C, H, W) in out_dtype; ``flip`` mirrors the kernel (the input gradient)."""
    batch, channels, height, width = x.shape
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    _launch(_dwconv_kernel, batch * channels, height, width, x, weight,
            bias if bias is not None else weight, out, channels, height, width,
            K=weight.shape[-1], FLIP=flip, HAS_BIAS=bias is not None)
    return out


def dwconv_wgrad(x, dy, kernel_size):
    """x, dy (B, C, H, W) contiguous -> (weight gradient (C, 1, k, k), bias gradient (C,)),
    float32."""
    batch, channels, height, width = x.shape
    tiles = tiles_per_plane(height, width)[0]
    taps = kernel_size * kernel_size
    partial = torch.empty(batch, channels, tiles, taps + 1, device=x.device, dtype=torch.float32)
    _launch(_dwconv_wgrad_kernel, batch * channels, height, width, x, dy, partial, height, width,
            K=kernel_size)
    sums = partial.sum((0, 2))
    return sums[:, :taps].reshape(channels, 1, kernel_size, kernel_size), sums[:, taps]
