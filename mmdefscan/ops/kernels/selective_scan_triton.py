"""Triton selective scan (Mamba S6 with per-step B, C shared by a group of channels), forward and
backward, parallel over time inside a tile and, for long sequences, over segments.

A program owns BD channels of one group, one batch element and one time segment. It walks the
segment in tiles of T steps; inside a tile the recurrence h_t = a_t h_{t-1} + b_t (a = exp(dt A),
b = dt B u) of all (channel, state) pairs is one associative scan along time (BD x N x T
values), and the tile's last state carries into the next tile. When batch x channel blocks alone
cannot fill the GPU (detection maps: 2 images, 67,200 steps), the sequence is cut into segments:
each is scanned from a zero state, a short sequential pass combines the segment ends into the
state entering every segment, and the segments are scanned again from those states.

Backward (adjoint lam_t = C_t dy_t + a_{t+1} lam_{t+1}, a reverse scan): a forward pass stores
the state at every tile start; each tile then recomputes its states from there and runs the
reverse scan, segments again joined by the short sequential pass. Channel-summed gradients of B
and C are written per channel block and summed by the caller, dA, dD and d delta_bias per
program. Reference: ``mmdefscan.ops.selective_scan.selective_scan_ref``.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    """x -> a1 x + b1 followed by x -> a2 x + b2 (in scan order; a reverse scan runs from the
    end, so there the later step comes first)."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _softplus(x):
    """log(1 + e^x), identity above 20 as in mamba-ssm; log1p by Goldberg's trick because
    log(1 + e^x) alone loses the digits of a small e^x."""
    e = tl.exp(x)
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x <= 20.0, log1p, x)


@triton.jit
def _program_indices(L, channels, cpg, seg_len, BD: tl.constexpr, NP: tl.constexpr, N):
    """Channel rows (global b * channels + c), group, segment bounds and state indices."""
    block, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ch = block * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    t_start = seg * seg_len
    t_end = tl.minimum(t_start + seg_len, L)
    return block, b, seg, ch, (block * BD) // cpg, b * channels + ch, n, n < N, t_start, t_end


@triton.jit
def _load_tile(U, DELTA, BM, CM, row, bias, t, tmask, b_off, c_off, n, nmask, sbn, scn, L,
               SOFTPLUS: tl.constexpr):
    """One tile, float32: u, dt (0 outside the segment, so a = 1 and b = 0 pass the state on)
    and delta + bias, each (BD, T); B and C (NP, T)."""
    mask = tmask[None, :]
    offs = row[:, None] * L + t[None, :]
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    raw = tl.load(DELTA + offs, mask=mask, other=0.0).to(tl.float32) + bias[:, None]
    if SOFTPLUS:
        dt = tl.where(mask, _softplus(raw), 0.0)
    else:
        dt = tl.where(mask, raw, 0.0)
    bc_mask = nmask[:, None] & mask
    Bt = tl.load(BM + b_off + n[:, None] * sbn + t[None, :], mask=bc_mask, other=0.0)
    Ct = tl.load(CM + c_off + n[:, None] * scn + t[None, :], mask=bc_mask, other=0.0)
    return u, dt, raw, Bt.to(tl.float32), Ct.to(tl.float32)


@triton.jit
def _tile_states(u, dt, Bt, A2, h):
    """States of every step of the tile from the state h before it: (BD, NP, T), and b."""
    a = tl.exp2(dt[:, None, :] * A2[:, :, None])
    b = (dt * u)[:, None, :] * Bt[None, :, :]
    a_cum, b_cum = tl.associative_scan((a, b), 2, _affine_combine)
    return a_cum * h[:, :, None] + b_cum, b


@triton.jit
def _scan_fwd_kernel(U, DELTA, A, BM, CM, DSKIP, BIAS, Y, H0, STATES, SEG_H, SEG_P,
                     L, channels, cpg, seg_len, n_tiles, n_seg, N,
                     sbb, sbg, sbn, scb, scg, scn,
                     NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_H0: tl.constexpr, WRITE_Y: tl.constexpr, WRITE_STATES: tl.constexpr,
                     WRITE_SEG: tl.constexpr):
    """One segment of BD channels: y (if WRITE_Y), the state before every tile (WRITE_STATES,
    (rows, n_tiles, N)), or the segment's end state from H0 and its decay exp(A sum dt)
    (WRITE_SEG, (rows, n_seg, N))."""
    block, b, seg, ch, g, row, n, nmask, t_start, t_end = _program_indices(
        L, channels, cpg, seg_len, BD, NP, N)
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
    last = (tl.arange(0, T) == T - 1)[None, None, :]
    b_off, c_off = b * sbb + g * sbg, b * scb + g * scg
    for t0 in range(t_start, t_end, T):
        t = t0 + tl.arange(0, T)
        tmask = t < t_end
        u, dt, raw, Bt, Ct = _load_tile(U, DELTA, BM, CM, row, bias, t, tmask, b_off, c_off, n,
                                        nmask, sbn, scn, L, SOFTPLUS)
        if WRITE_STATES:
            tl.store(STATES + (row[:, None] * n_tiles + t0 // T) * N + n[None, :], h,
                     mask=state_mask)
        hs, _ = _tile_states(u, dt, Bt, A2, h)
        if WRITE_Y:
            y = tl.sum(hs * Ct[None, :, :], 1) + d_skip[:, None] * u
            tl.store(Y + row[:, None] * L + t[None, :], y.to(Y.dtype.element_ty),
                     mask=tmask[None, :])
        h = tl.sum(tl.where(last, hs, 0.0), 2)  # steps past the end pass the state on
        dt_sum += tl.sum(dt, 1)
    if WRITE_SEG:
        tl.store(SEG_H + seg_offs, h, mask=state_mask)
        tl.store(SEG_P + seg_offs, tl.exp2(dt_sum[:, None] * A2), mask=state_mask)


@triton.jit
def _combine_segments_kernel(SEG_X, SEG_P, CARRY, total, n_seg, N,
                             REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """carry[s] = the value entering segment s: forward carry[s+1] = P[s] carry[s] + X[s],
    reverse carry[s-1] = P[s] carry[s] + X[s] (rows x N independent recurrences)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # over rows * N
    mask = idx < total
    base = (idx // N) * n_seg * N + idx % N
    carry = tl.zeros([BLOCK], tl.float32)
    for i in range(n_seg):
        s = n_seg - 1 - i if REVERSE else i
        tl.store(CARRY + base + s * N, carry, mask=mask)
        carry = (tl.load(SEG_P + base + s * N, mask=mask, other=0.0) * carry
                 + tl.load(SEG_X + base + s * N, mask=mask, other=0.0))


@triton.jit
def _scan_bwd_kernel(U, DELTA, A, BM, CM, DSKIP, BIAS, DY, STATES, LAM0, SEG_LAM, SEG_P,
                     DU, DDELTA, DB_PART, DC_PART, DA_PART, DD_PART, DBIAS_PART,
                     L, channels, cpg, seg_len, n_tiles, n_seg, N, batch, groups,
                     sbb, sbg, sbn, scb, scg, scn,
                     NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_LAM0: tl.constexpr, GRADS: tl.constexpr):
    """Reverse pass over one segment of BD channels. GRADS: du, d delta (rows, L), the B and C
    gradients summed over the block's channels (cpg / BD, batch, groups, N, L), dA
    (batch * n_seg, channels, N), dD and d delta_bias (batch * n_seg, channels). Otherwise only
    the adjoint entering the segment from a zero end and the segment's decay (SEG_LAM, SEG_P)."""
    block, b, seg, ch, g, row, n, nmask, t_start, t_end = _program_indices(
        L, channels, cpg, seg_len, BD, NP, N)
    a_coef = tl.load(A + ch[:, None] * N + n[None, :], mask=nmask[None, :], other=0.0)
    A2 = a_coef * 1.4426950408889634  # log2(e)
    bias = tl.load(BIAS + ch) if HAS_BIAS else tl.zeros([BD], tl.float32)
    d_skip = tl.load(DSKIP + ch) if HAS_D else tl.zeros([BD], tl.float32)
    state_mask = nmask[None, :]
    seg_offs = (row[:, None] * n_seg + seg) * N + n[None, :]
    if HAS_LAM0:
        lam = tl.load(LAM0 + seg_offs, mask=state_mask, other=0.0)
    else:
        lam = tl.zeros([BD, NP], tl.float32)
    first = (tl.arange(0, T) == 0)[None, None, :]
    b_off, c_off = b * sbb + g * sbg, b * scb + g * scg
    dA = tl.zeros([BD, NP], tl.float32)
    dD = tl.zeros([BD], tl.float32)
    dbias = tl.zeros([BD], tl.float32)
    dt_next_sum = tl.zeros([BD], tl.float32)
    n_in_seg = tl.cdiv(t_end - t_start, T)
    for i in range(n_in_seg):
        t0 = t_start + (n_in_seg - 1 - i) * T
        t = t0 + tl.arange(0, T)
        tmask = t < t_end
        mask = tmask[None, :]
        offs = row[:, None] * L + t[None, :]
        u, dt, raw, Bt, Ct = _load_tile(U, DELTA, BM, CM, row, bias, t, tmask, b_off, c_off, n,
                                        nmask, sbn, scn, L, SOFTPLUS)
        # a_{t+1}: the next step's decay (its delta read again; 1 past the sequence end)
        next_mask = (t + 1 < L)[None, :] & mask
        raw_next = tl.load(DELTA + offs + 1, mask=next_mask, other=0.0).to(tl.float32)
        raw_next += bias[:, None]
        if SOFTPLUS:
            dt_next = tl.where(next_mask, _softplus(raw_next), 0.0)
        else:
            dt_next = tl.where(next_mask, raw_next, 0.0)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        a_next = tl.exp2(dt_next[:, None, :] * A2[:, :, None])
        lam_cum, g_cum = tl.associative_scan((a_next, Ct[None, :, :] * dy[:, None, :]), 2,
                                             _affine_combine, reverse=True)
        lams = lam_cum * lam[:, :, None] + g_cum  # lam_t of every step
        lam = tl.sum(tl.where(first, lams, 0.0), 2)
        dt_next_sum += tl.sum(dt_next, 1)
        if GRADS:
            h0 = tl.load(STATES + (row[:, None] * n_tiles + t0 // T) * N + n[None, :],
                         mask=state_mask, other=0.0)
            hs, bx = _tile_states(u, dt, Bt, A2, h0)
            lam_b = tl.sum(lams * Bt[None, :, :], 1)  # d(dt u)
            dlog_a = lams * (hs - bx)  # lam_t a_t h_{t-1}
            ddt = u * lam_b + tl.sum(dlog_a * a_coef[:, :, None], 1)
            if SOFTPLUS:
                ddt = tl.where(raw <= 20.0, ddt * tl.sigmoid(raw), ddt)
            ddt = tl.where(mask, ddt, 0.0)
            tl.store(DU + offs, (dt * lam_b + d_skip[:, None] * dy).to(DU.dtype.element_ty),
                     mask=mask)
            tl.store(DDELTA + offs, ddt.to(DDELTA.dtype.element_ty), mask=mask)
            dA += tl.sum(dlog_a * dt[:, None, :], 2)
            dD += tl.sum(dy * u, 1)
            dbias += tl.sum(ddt, 1)
            part = ((block - g * (cpg // BD)) * batch + b) * groups + g
            bc_offs = (part * N + n[:, None]) * L + t[None, :]
            bc_mask = nmask[:, None] & mask
            tl.store(DB_PART + bc_offs, tl.sum(lams * (dt * u)[:, None, :], 0), mask=bc_mask)
            tl.store(DC_PART + bc_offs, tl.sum(hs * dy[:, None, :], 0), mask=bc_mask)
    if GRADS:
        prog = b * n_seg + seg
        tl.store(DA_PART + (prog * channels + ch[:, None]) * N + n[None, :], dA, mask=state_mask)
        tl.store(DD_PART + prog * channels + ch, dD)
        tl.store(DBIAS_PART + prog * channels + ch, dbias)
    else:
        tl.store(SEG_LAM + seg_offs, lam, mask=state_mask)
        tl.store(SEG_P + seg_offs, tl.exp2(dt_next_sum[:, None] * A2), mask=state_mask)


# Tile sizes: BD channels x N states x T steps in registers per program (tuned on the H200 by
# tools/analysis/bench_kernels.py); programs wanted before segments are cut (4 waves of 132 SMs)
TILE_T, MAX_BD, WANTED_PROGRAMS = 32, 16, 528
NUM_WARPS = 4


def block_channels(cpg):
    """The channel block: the largest power of two that divides the group size, <= MAX_BD."""
    bd = 1
    while bd < MAX_BD and cpg % (2 * bd) == 0:
        bd *= 2
    return bd


def segmentation(programs, length, segments=None):
    """(number of segments, steps per segment): enough programs to fill the GPU, segments of
    whole tiles and at least 4 tiles each."""
    if segments is None:
        segments = max(1, min(-(-WANTED_PROGRAMS // programs), length // (4 * TILE_T)))
    seg_len = -(-(-(-length // segments)) // TILE_T) * TILE_T
    return -(-length // seg_len), seg_len


class _Launch:
    """Shapes, strides and the grid of one scan call, shared by its kernels."""

    def __init__(self, u, A, B, C, D, delta_bias, softplus, segments):
        self.batch, self.channels, self.length = u.shape
        self.groups, self.n_state = B.shape[1], A.shape[1]
        self.cpg = self.channels // self.groups
        self.bd = block_channels(self.cpg)
        self.rows = self.batch * self.channels
        self.n_seg, self.seg_len = segmentation(self.rows // self.bd, self.length, segments)
        self.n_tiles = -(-self.length // TILE_T)
        self.grid = (self.channels // self.bd, self.batch, self.n_seg)
        self.sizes = (self.length, self.channels, self.cpg, self.seg_len, self.n_tiles,
                      self.n_seg, self.n_state)
        self.strides = (*B.stride()[:3], *C.stride()[:3])
        self.meta = dict(NP=triton.next_power_of_2(self.n_state), BD=self.bd, T=TILE_T,
                         HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                         SOFTPLUS=softplus, num_warps=NUM_WARPS)

    def states(self, n, device):
        return torch.empty(self.rows, n, self.n_state, device=device, dtype=torch.float32)

    def combine(self, seg_x, seg_p, reverse):
        carry = torch.empty_like(seg_x)
        total, block = self.rows * self.n_state, 256
        _combine_segments_kernel[(triton.cdiv(total, block),)](
            seg_x, seg_p, carry, total, self.n_seg, self.n_state, REVERSE=reverse, BLOCK=block)
        return carry


def _forward_passes(launch, u, delta, A, B, C, D, bias, y=None, states=None):
    """Run the forward kernel: y and/or the tile-start states; two passes with segments."""
    none = u  # placeholder for pointers a variant does not touch
    D, bias = (none if t is None else t for t in (D, bias))
    h0 = None
    if launch.n_seg > 1:  # segment ends from zero states, then the states entering segments
        seg_h, seg_p = launch.states(launch.n_seg, u.device), launch.states(launch.n_seg,
                                                                            u.device)
        _scan_fwd_kernel[launch.grid](
            u, delta, A, B, C, D, bias, none, none, none, seg_h, seg_p, *launch.sizes,
            *launch.strides, HAS_H0=False, WRITE_Y=False, WRITE_STATES=False, WRITE_SEG=True,
            **launch.meta)
        h0 = launch.combine(seg_h, seg_p, reverse=False)
    _scan_fwd_kernel[launch.grid](
        u, delta, A, B, C, D, bias, none if y is None else y, none if h0 is None else h0,
        none if states is None else states, none, none, *launch.sizes, *launch.strides,
        HAS_H0=h0 is not None, WRITE_Y=y is not None, WRITE_STATES=states is not None,
        WRITE_SEG=False, **launch.meta)


def scan_fwd(u, delta, A, B, C, D, delta_bias, softplus, segments=None):
    """u, delta (b, channels, L) contiguous; A (channels, N) float32; B, C (b, G, N, L) with
    unit step stride; D, delta_bias (channels,) float32 or None -> y (b, channels, L) in u's
    dtype. ``segments`` overrides the automatic time split (tests)."""
    launch = _Launch(u, A, B, C, D, delta_bias, softplus, segments)
    y = torch.empty_like(u)
    _forward_passes(launch, u, delta, A, B, C, D, delta_bias, y=y)
    return y


def scan_bwd(dy, u, delta, A, B, C, D, delta_bias, softplus, segments=None):
    """Gradients of :func:`scan_fwd` -> du, d delta (u's dtype), dA, dB, dC (B's, C's dtype,
    contiguous), dD, d delta_bias (float32; None where the input was None)."""
    launch = _Launch(u, A, B, C, D, delta_bias, softplus, segments)
    states = launch.states(launch.n_tiles, u.device)
    _forward_passes(launch, u, delta, A, B, C, D, delta_bias, states=states)
    none = u
    Dk, bias = (none if t is None else t for t in (D, delta_bias))
    lam0 = None
    batch, channels, length, n_state = launch.batch, launch.channels, launch.length, launch.n_state
    parts = (launch.cpg // launch.bd, batch, launch.groups, n_state, length)
    if launch.n_seg > 1:  # adjoints entering each segment from its end
        seg_lam, seg_p = launch.states(launch.n_seg, u.device), launch.states(launch.n_seg,
                                                                              u.device)
        _scan_bwd_kernel[launch.grid](
            u, delta, A, B, C, Dk, bias, dy, states, none, seg_lam, seg_p,
            none, none, none, none, none, none, none, *launch.sizes, batch, launch.groups,
            *launch.strides, HAS_LAM0=False, GRADS=False, **launch.meta)
        lam0 = launch.combine(seg_lam, seg_p, reverse=True)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    f32 = dict(device=u.device, dtype=torch.float32)
    db_part, dc_part = torch.empty(parts, **f32), torch.empty(parts, **f32)
    da_part = torch.empty(batch * launch.n_seg, channels, n_state, **f32)
    dd_part = torch.empty(batch * launch.n_seg, channels, **f32)
    dbias_part = torch.empty_like(dd_part)
    _scan_bwd_kernel[launch.grid](
        u, delta, A, B, C, Dk, bias, dy, states, none if lam0 is None else lam0, none, none,
        du, ddelta, db_part, dc_part, da_part, dd_part, dbias_part, *launch.sizes, batch,
        launch.groups, *launch.strides, HAS_LAM0=lam0 is not None, GRADS=True, **launch.meta)
    return (du, ddelta, da_part.sum(0), db_part.sum(0).to(B.dtype), dc_part.sum(0).to(C.dtype),
            dd_part.sum(0) if D is not None else None,
            dbias_part.sum(0) if delta_bias is not None else None)
