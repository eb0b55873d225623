"""Triton selective-scan forward (Mamba S6, per-step B and C shared by a group of channels).

A program owns BD channels of one group, one batch element and one time segment, keeps their
(BD x N) states in registers and steps through time: h = exp(dt A) h + dt B u, y = C h + D u.
Nothing is scanned twice and no block-wide scan synchronises threads, which is where mamba-ssm's
kernel spends its time on DefMamba's shapes (1 to 2 ms per stage at 224x224). When
batch x channel blocks alone cannot fill the GPU (detection maps: 2 images, 67,200 steps), the
sequence is cut into segments: each is run from a zero state, a short sequential pass combines
the segment ends into the state entering every segment, and the segments run again from there.

For training the kernel also writes the state at the end of every 2048-step chunk in the layout
of mamba-ssm's forward (``x``: (b, channels, chunks, N) pairs of (1, h)), so mamba-ssm's backward
kernel differentiates the call (it reads only h from ``x``).
A tile-parallel Triton scan (an associative scan over T steps of BD x N states) was measured
slower than mamba-ssm's kernel in both directions and was replaced by this one (see
docs/performance.md). Reference: ``mmdefscan.ops.selective_scan.selective_scan_ref``.
"""
import torch
import triton
import triton.language as tl

MAMBA_CHUNK = 2048  # steps per chunk of mamba-ssm's kernels (its ``x`` holds one state per chunk)


@triton.jit
def _softplus(x):
    """log(1 + e^x), identity above 20 as in mamba-ssm; log1p by Goldberg's trick because
    log(1 + e^x) alone loses the digits of a small e^x."""
    e = tl.exp(x)
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x <= 20.0, log1p, x)


@triton.jit
def _columns(x, R: tl.constexpr):
    """x (R, 4) -> its four columns (R,)."""
    even, odd = tl.split(tl.reshape(x, [R, 2, 2]))
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    return c0, c1, c2, c3


@triton.jit
def _step(h, dt, dtu, A2, Bt, Ct):
    """One time step of all (channel, state) pairs: the new state and C h."""
    h = tl.exp2(dt[:, None] * A2) * h + dtu[:, None] * Bt[None, :]
    return h, tl.sum(h * Ct[None, :], 1)


@triton.jit
def _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, t0, t_stop, nmask,
                SOFTPLUS: tl.constexpr):
    """Four steps from t0, float32: u, dt (0 past t_stop: the state passes unchanged), each
    (BD, 4); B and C (NP, 4)."""
    t = t0 + tl.arange(0, 4)
    tmask = (t < t_stop)[None, :]
    u = tl.load(u_ptr[:, None] + t[None, :], mask=tmask, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr[:, None] + t[None, :], mask=tmask, other=0.0).to(tl.float32)
    dt += bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(tmask, dt, 0.0)
    bc_mask = nmask[:, None] & tmask
    Bt = tl.load(b_ptr[:, None] + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
    Ct = tl.load(c_ptr[:, None] + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
    return u, dt, Bt, Ct


@triton.jit
def _scan_fwd_kernel(U, DELTA, A, BM, CM, DSKIP, BIAS, Y, H0, CHUNK_H, SEG_H, SEG_P,
                     L, channels, cpg, seg_len, n_chunks, n_seg, N,
                     sbb, sbg, sbn, scb, scg, scn,
                     NP: tl.constexpr, BD: tl.constexpr, CHUNK: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, WRITE_Y: tl.constexpr,
                     WRITE_CHUNKS: tl.constexpr, WRITE_SEG: tl.constexpr):
    """One segment of BD channels (grid: channel blocks, batch, segments). WRITE_Y: y and, with
    WRITE_CHUNKS, the state after every CHUNK steps (rows, n_chunks, N, 2) as (1, h).
    WRITE_SEG: the segment's end state from H0 (or zero) and its decay exp(A sum dt),
    (rows, n_seg, N) each. Steps go four at a time: one load and one store per four steps,
    and the next four are loaded before the current ones are computed."""
    block, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ch = block * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    nmask = n < N
    g = (block * BD) // cpg
    row = b * channels + ch
    t_start = seg * seg_len
    t_end = tl.minimum(t_start + seg_len, L)
    a_coef = tl.load(A + ch[:, None] * N + n[None, :], mask=nmask[None, :], other=0.0)
    A2 = a_coef * 1.4426950408889634  # log2(e): exp(x) = exp2(x log2(e))
    bias = tl.load(BIAS + ch) if HAS_BIAS else tl.zeros([BD], tl.float32)
    d_skip = tl.load(DSKIP + ch) if HAS_D else tl.zeros([BD], tl.float32)
    state_mask = nmask[None, :]
    seg_offs = (row[:, None] * n_seg + seg) * N + n[None, :]
    if HAS_H0:
        h = tl.load(H0 + seg_offs, mask=state_mask, other=0.0)
    else:
        h = tl.zeros([BD, NP], tl.float32)
    dt_sum = tl.zeros([BD], tl.float32)
    u_ptr, delta_ptr, y_ptr = U + row * L, DELTA + row * L, Y + row * L
    b_ptr = BM + b * sbb + g * sbg + n * sbn
    c_ptr = CM + b * scb + g * scg + n * scn
    c0 = t_start
    while c0 < t_end:  # pieces between mamba-ssm's chunk ends (segments need not align)
        c_stop = tl.minimum((c0 // CHUNK + 1) * CHUNK, t_end)
        u4, dt4, B4, C4 = _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, c0, c_stop, nmask,
                                      SOFTPLUS)
        for t0 in range(c0, c_stop, 4):
            u_cur, dt_cur, B_cur, C_cur = u4, dt4, B4, C4
            u4, dt4, B4, C4 = _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, t0 + 4, c_stop,
                                          nmask, SOFTPLUS)
            dt0, dt1, dt2, dt3 = _columns(dt_cur, BD)
            dtu0, dtu1, dtu2, dtu3 = _columns(dt_cur * u_cur, BD)
            B0, B1, B2, B3 = _columns(B_cur, NP)
            C0, C1, C2, C3 = _columns(C_cur, NP)
            h, y0 = _step(h, dt0, dtu0, A2, B0, C0)
            h, y1 = _step(h, dt1, dtu1, A2, B1, C1)
            h, y2 = _step(h, dt2, dtu2, A2, B2, C2)
            h, y3 = _step(h, dt3, dtu3, A2, B3, C3)
            if WRITE_Y:
                y = tl.reshape(tl.join(tl.join(y0, y2), tl.join(y1, y3)), [BD, 4])
                y += d_skip[:, None] * u_cur
                t = t0 + tl.arange(0, 4)
                tl.store(y_ptr[:, None] + t[None, :], y.to(Y.dtype.element_ty),
                         mask=(t < c_stop)[None, :])
            if WRITE_SEG:
                dt_sum += tl.sum(dt_cur, 1)
        if WRITE_CHUNKS:
            if (c_stop % CHUNK == 0) | (c_stop == L):  # a chunk ends here
                chunk_offs = ((row[:, None] * n_chunks + c0 // CHUNK) * N + n[None, :]) * 2
                tl.store(CHUNK_H + chunk_offs, tl.full([BD, NP], 1.0, tl.float32),
                         mask=state_mask)
                tl.store(CHUNK_H + chunk_offs + 1, h, mask=state_mask)
        c0 = c_stop
    if WRITE_SEG:
        tl.store(SEG_H + seg_offs, h, mask=state_mask)
        tl.store(SEG_P + seg_offs, tl.exp2(dt_sum[:, None] * A2), mask=state_mask)


@triton.jit
def _combine_segments_kernel(SEG_H, SEG_P, H0, total, n_seg, N, BLOCK: tl.constexpr):
    """h0[s + 1] = P[s] h0[s] + H[s], h0[0] = 0: the state entering every segment
    (rows x N independent recurrences of n_seg steps)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # over rows * N
    mask = idx < total
    base = (idx // N) * n_seg * N + idx % N
    carry = tl.zeros([BLOCK], tl.float32)
    for s in range(n_seg):
        tl.store(H0 + base + s * N, carry, mask=mask)
        carry = (tl.load(SEG_P + base + s * N, mask=mask, other=0.0) * carry
                 + tl.load(SEG_H + base + s * N, mask=mask, other=0.0))


# Tuned on the H200 with tools/analysis/bench_scan.py: channels per program, warps, unrolled
# steps, and the programs wanted before the sequence is cut into segments.
MAX_BD, NUM_WARPS, WANTED_PROGRAMS = 32, 2, 264


def block_channels(cpg):
    """The channel block: the largest power of two that divides the group size, <= MAX_BD."""
    bd = 1
    while bd < MAX_BD and cpg % (2 * bd) == 0:
        bd *= 2
    return bd


def segmentation(programs, length, align, segments=None):
    """(number of segments, steps per segment): enough programs to fill the GPU; segments are
    whole multiples of ``align`` steps (a multiple of the kernel's four steps)."""
    if segments is None:
        segments = max(1, min(-(-WANTED_PROGRAMS // programs), length // align))
    seg_len = -(-(-(-length // segments)) // align) * align
    return -(-length // seg_len), seg_len


def scan_fwd(u, delta, A, B, C, D, delta_bias, softplus, save_chunks=False, segments=None):
    """u, delta (b, channels, L) contiguous; A (channels, N) float32; B, C (b, G, N, L) with unit
    step stride; D, delta_bias (channels,) float32 or None. Returns y (b, channels, L) in u's
    dtype and, with ``save_chunks``, mamba-ssm's ``x`` (b, channels, chunks, 2N) float32.
    ``segments`` overrides the automatic time split (tests)."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    cpg = channels // groups
    bd = block_channels(cpg)
    rows = batch * channels
    n_chunks = -(-length // MAMBA_CHUNK)
    n_seg, seg_len = segmentation(rows // bd, length, 256, segments)
    grid = (channels // bd, batch, n_seg)
    y = torch.empty_like(u)
    chunk_h = u.new_empty(batch, channels, n_chunks, 2 * n_state, dtype=torch.float32) \
        if save_chunks else None
    none = u  # placeholder for the pointers a variant does not touch
    D, delta_bias = (none if t is None else t for t in (D, delta_bias))
    args = (u, delta, A, B, C, D, delta_bias)
    sizes = (length, channels, cpg, seg_len, n_chunks, n_seg, n_state, *B.stride()[:3],
             *C.stride()[:3])
    meta = dict(NP=triton.next_power_of_2(n_state), BD=bd, CHUNK=MAMBA_CHUNK,
                HAS_D=D is not none, HAS_BIAS=delta_bias is not none, SOFTPLUS=softplus,
                num_warps=NUM_WARPS)
    h0 = None
    if n_seg > 1:  # segment ends from zero states, then the state entering every segment
        seg_h = torch.empty(rows, n_seg, n_state, device=u.device, dtype=torch.float32)
        seg_p = torch.empty_like(seg_h)
        _scan_fwd_kernel[grid](*args, none, none, none, seg_h, seg_p, *sizes, HAS_H0=False,
                               WRITE_Y=False, WRITE_CHUNKS=False, WRITE_SEG=True, **meta)
        h0 = torch.empty_like(seg_h)
        total = rows * n_state
        _combine_segments_kernel[(triton.cdiv(total, 256),)](seg_h, seg_p, h0, total, n_seg,
                                                             n_state, BLOCK=256)
    _scan_fwd_kernel[grid](*args, y, none if h0 is None else h0,
                           none if chunk_h is None else chunk_h, none, none, *sizes,
                           HAS_H0=h0 is not None, WRITE_Y=True, WRITE_CHUNKS=save_chunks,
                           WRITE_SEG=False, **meta)
    return y, chunk_h
