"""Triton selective scan (Mamba S6, per-step B and C shared by a group of channels).

Forward: a program owns BD channels of one group, one batch element and one time segment, keeps
their (BD x N) states in registers and steps through time, h = exp(dt A) h + dt B u and
y = C h + D u, four steps per load and store with the next four loaded ahead. Nothing is scanned
twice and no block-wide scan synchronises threads, which is where mamba-ssm's kernel spends its
time on DefMamba's shapes. When batch x channel blocks alone cannot fill the GPU (detection
maps: 2 images, 67,200 steps), the sequence is cut into segments: each is run from a zero state,
a short sequential pass combines the segment ends into the state entering every segment, and the
segments run again from there.

Training: the Triton backward (:func:`scan_bwd`): states recomputed from one stored every 16
steps, the adjoint run back through them, the sequence cut into time segments when there are
too few programs (each segment's adjoint from zero first, then a carry pass, as the forward's).
It takes less kernel time per training step than mamba-ssm's backward kernel on DefMamba's
shapes (``tools/analysis/bench_scan.py --bwd-configs`` times both).

A tile-parallel scan (an associative scan over T steps of BD x N states) is slower than
mamba-ssm's kernel in both directions on these shapes, hence the sequential steps above.
Reference: ``mmdefscan.ops.selective_scan.selective_scan_ref``.
"""
import torch
import triton
import triton.language as tl


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
def _columns_join(c0, c1, c2, c3, R: tl.constexpr):
    """Four columns (R,) -> (R, 4); the inverse of :func:`_columns`."""
    return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), [R, 4])


@triton.jit
def _decay(dt, A2):
    """exp(dt A) of one step, (BD, NP), from A log2(e)."""
    return tl.exp2(dt[:, None] * A2)


@triton.jit
def _update(h, a, dtu, Bt):
    """One time step of all (channel, state) pairs: a h + dt u B, a = exp(dt A)."""
    return a * h + dtu[:, None] * Bt[None, :]


@triton.jit
def _channel_block(A, BIAS, DSKIP, BM, CM, block, b, channels, cpg, N, sbb, sbg, sbn, scb, scg,
                   scn, BD: tl.constexpr, NP: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_D: tl.constexpr):
    """What a program of BD channels (channel block ``block``, batch element b) reads once:
    channel and state indices, the state mask, global rows, A and A log2(e) (BD, NP), the delta
    bias and D (BD,), and pointers to the (NP,) rows of its group's B and C at step 0."""
    ch = block * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    nmask = n < N
    g = (block * BD) // cpg
    a_coef = tl.load(A + ch[:, None] * N + n[None, :], mask=nmask[None, :], other=0.0)
    A2 = a_coef * 1.4426950408889634  # log2(e): exp(x) = exp2(x log2(e))
    bias = tl.load(BIAS + ch) if HAS_BIAS else tl.zeros([BD], tl.float32)
    d_skip = tl.load(DSKIP + ch) if HAS_D else tl.zeros([BD], tl.float32)
    b_ptr = BM + b * sbb + g * sbg + n * sbn
    c_ptr = CM + b * scb + g * scg + n * scn
    return ch, n, nmask, g, b * channels + ch, a_coef, A2, bias, d_skip, b_ptr, c_ptr


@triton.jit
def _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, t0, t_stop, nmask,
                SOFTPLUS: tl.constexpr):
    """Four steps from t0, float32: u, dt (0 past t_stop: the state passes unchanged) and
    delta + bias, each (BD, 4); B and C (NP, 4)."""
    t = t0 + tl.arange(0, 4)
    tmask = (t < t_stop)[None, :]
    u = tl.load(u_ptr[:, None] + t[None, :], mask=tmask, other=0.0).to(tl.float32)
    raw = tl.load(delta_ptr[:, None] + t[None, :], mask=tmask, other=0.0).to(tl.float32)
    raw += bias[:, None]
    dt = tl.where(tmask, _softplus(raw) if SOFTPLUS else raw, 0.0)
    bc_mask = nmask[:, None] & tmask
    Bt = tl.load(b_ptr[:, None] + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
    Ct = tl.load(c_ptr[:, None] + t[None, :], mask=bc_mask, other=0.0).to(tl.float32)
    return u, dt, raw, Bt, Ct


@triton.jit
def _scan_fwd_kernel(U, DELTA, A, BM, CM, DSKIP, BIAS, Y, H0, CKPT_H, SEG_H, SEG_P,
                     L, channels, cpg, seg_len, n_ckpt, n_seg, N,
                     sbb, sbg, sbn, scb, scg, scn,
                     NP: tl.constexpr, BD: tl.constexpr, CKPT: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_H0: tl.constexpr, WRITE_Y: tl.constexpr, WRITE_CKPT: tl.constexpr,
                     WRITE_SEG: tl.constexpr):
    """One segment of BD channels (grid: channel blocks, batch, segments). WRITE_Y: y.
    WRITE_CKPT: the state before every CKPT steps (rows, n_ckpt, N), for the Triton backward.
    WRITE_SEG: the segment's end state from H0 (or zero) and its decay exp(A sum dt),
    (rows, n_seg, N) each. Steps go four at a time: one load and one store per four steps,
    and the next four are loaded before the current ones are computed."""
    block, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ch, n, nmask, g, row, a_coef, A2, bias, d_skip, b_ptr, c_ptr = _channel_block(
        A, BIAS, DSKIP, BM, CM, block, b, channels, cpg, N, sbb, sbg, sbn, scb, scg, scn, BD, NP,
        HAS_BIAS, HAS_D)
    t_start = seg * seg_len
    t_end = tl.minimum(t_start + seg_len, L)
    state_mask = nmask[None, :]
    seg_offs = (row[:, None] * n_seg + seg) * N + n[None, :]
    if HAS_H0:
        h = tl.load(H0 + seg_offs, mask=state_mask, other=0.0)
    else:
        h = tl.zeros([BD, NP], tl.float32)
    dt_sum = tl.zeros([BD], tl.float32)
    u_ptr, delta_ptr, y_ptr = U + row * L, DELTA + row * L, Y + row * L
    u4, dt4, _, B4, C4 = _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, t_start, t_end,
                                     nmask, SOFTPLUS)
    for t0 in range(t_start, t_end, 4):
        u_cur, dt_cur, B_cur, C_cur = u4, dt4, B4, C4
        u4, dt4, _, B4, C4 = _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, t0 + 4, t_end,
                                         nmask, SOFTPLUS)
        if WRITE_CKPT:
            if t0 % CKPT == 0:  # the state before every CKPT steps, for the backward
                tl.store(CKPT_H + (row[:, None] * n_ckpt + t0 // CKPT) * N + n[None, :], h,
                         mask=state_mask)
        dt0, dt1, dt2, dt3 = _columns(dt_cur, BD)
        dtu0, dtu1, dtu2, dtu3 = _columns(dt_cur * u_cur, BD)
        B0, B1, B2, B3 = _columns(B_cur, NP)
        C0, C1, C2, C3 = _columns(C_cur, NP)
        h = _update(h, _decay(dt0, A2), dtu0, B0)
        y0 = tl.sum(h * C0[None, :], 1)
        h = _update(h, _decay(dt1, A2), dtu1, B1)
        y1 = tl.sum(h * C1[None, :], 1)
        h = _update(h, _decay(dt2, A2), dtu2, B2)
        y2 = tl.sum(h * C2[None, :], 1)
        h = _update(h, _decay(dt3, A2), dtu3, B3)
        y3 = tl.sum(h * C3[None, :], 1)
        if WRITE_Y:
            y = _columns_join(y0, y1, y2, y3, BD) + d_skip[:, None] * u_cur
            t = t0 + tl.arange(0, 4)
            tl.store(y_ptr[:, None] + t[None, :], y.to(Y.dtype.element_ty),
                     mask=(t < t_end)[None, :])
        if WRITE_SEG:
            dt_sum += tl.sum(dt_cur, 1)
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


@triton.jit
def _advance(h, u_ptr, delta_ptr, b_ptr, c_ptr, bias, t0, L, nmask, A2,
             BD: tl.constexpr, NP: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The state after the four steps from t0."""
    u, dt, _, Bt, _ = _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, t0, L, nmask, SOFTPLUS)
    dt0, dt1, dt2, dt3 = _columns(dt, BD)
    dtu0, dtu1, dtu2, dtu3 = _columns(dt * u, BD)
    B0, B1, B2, B3 = _columns(Bt, NP)
    h = _update(h, _decay(dt0, A2), dtu0, B0)
    h = _update(h, _decay(dt1, A2), dtu1, B1)
    h = _update(h, _decay(dt2, A2), dtu2, B2)
    return _update(h, _decay(dt3, A2), dtu3, B3)


@triton.jit
def _adjoint_step(h, lam, a_next, dt, dtu, u, raw, dy, a_coef, Bt, Ct, d_skip,
                  SOFTPLUS: tl.constexpr):
    """Step t of the reverse pass, from the state h_t after it and the adjoint carried from t+1
    (lam_{t+1} and the decay a_{t+1}). Returns lam_t, du_t, d delta_t (BD,), the dA term
    (BD, NP) and the block's dB_t, dC_t (NP,)."""
    lam = Ct[None, :] * dy[:, None] + a_next * lam
    lam_b = tl.sum(lam * Bt[None, :], 1)
    dlog_a = lam * (h - dtu[:, None] * Bt[None, :])  # lam_t a_t h_{t-1}
    ddt = u * lam_b + tl.sum(dlog_a * a_coef, 1)
    if SOFTPLUS:
        ddt = tl.where(raw <= 20.0, ddt * tl.sigmoid(raw), ddt)
    return (lam, dt * lam_b + d_skip * dy, ddt,
            dlog_a * dt[:, None], tl.sum(lam * dtu[:, None], 0), tl.sum(h * dy[:, None], 0))


@triton.jit
def _adjoint_carry_kernel(DELTA, A, CM, BIAS, DY, SEG_E, SEG_P, L, channels, cpg, seg_len, n_seg,
                          N, scb, scg, scn, NP: tl.constexpr, BD: tl.constexpr,
                          HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The adjoint of one time segment of BD channels run back from zero (grid: channel blocks,
    batch, segments): lam_t = C_t dy_t + a_{t+1} lam_{t+1} needs neither the states nor u.
    Writes what the segment hands to the one before it, E = a_{t_s} lam_{t_s} at its first
    step t_s, and its decay P = exp(A sum dt), (rows, n_seg, N) each, at segment index
    n_seg - 1 - s: reversed, so that the forward's combine kernel carries them backwards."""
    block, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # B and D are not read here: C stands in for B, and D is off
    _, n, nmask, _, row, _, A2, bias, _, _, c_ptr = _channel_block(
        A, BIAS, A, CM, CM, block, b, channels, cpg, N, scb, scg, scn, scb, scg, scn, BD, NP,
        HAS_BIAS, False)
    t_start = seg * seg_len
    t_end = tl.minimum(t_start + seg_len, L)
    lam = tl.zeros([BD, NP], tl.float32)
    a_next = tl.zeros([BD, NP], tl.float32)
    dt_sum = tl.zeros([BD], tl.float32)
    for i in range(tl.cdiv(t_end - t_start, 4)):
        t = t_end - 4 - 4 * i + tl.arange(0, 4)  # may start before t_start: masked below
        tmask = ((t >= t_start) & (t < t_end))[None, :]
        raw = tl.load(DELTA + row[:, None] * L + t[None, :], mask=tmask, other=0.0)
        raw = raw.to(tl.float32) + bias[:, None]
        dt = tl.where(tmask, _softplus(raw) if SOFTPLUS else raw, 0.0)  # 0: a = 1, lam passes
        dy = tl.load(DY + row[:, None] * L + t[None, :], mask=tmask, other=0.0).to(tl.float32)
        Ct = tl.load(c_ptr[:, None] + t[None, :], mask=nmask[:, None] & tmask,
                     other=0.0).to(tl.float32)
        dt0, dt1, dt2, dt3 = _columns(dt, BD)
        dy0, dy1, dy2, dy3 = _columns(dy, BD)
        C0, C1, C2, C3 = _columns(Ct, NP)
        lam = C3[None, :] * dy3[:, None] + a_next * lam
        a_next = _decay(dt3, A2)
        lam = C2[None, :] * dy2[:, None] + a_next * lam
        a_next = _decay(dt2, A2)
        lam = C1[None, :] * dy1[:, None] + a_next * lam
        a_next = _decay(dt1, A2)
        lam = C0[None, :] * dy0[:, None] + a_next * lam
        a_next = _decay(dt0, A2)
        dt_sum += tl.sum(dt, 1)
    offs = (row[:, None] * n_seg + (n_seg - 1 - seg)) * N + n[None, :]
    tl.store(SEG_E + offs, a_next * lam, mask=nmask[None, :])
    tl.store(SEG_P + offs, tl.exp2(dt_sum[:, None] * A2), mask=nmask[None, :])


@triton.jit
def _scan_bwd_kernel(U, DELTA, A, BM, CM, DSKIP, BIAS, DY, CKPT_H, G, DU, DDELTA, DB_PART,
                     DC_PART, DA_PART, DD_PART, DBIAS_PART, L, channels, cpg, n_ckpt, seg_len,
                     n_seg, N, batch, groups, sbb, sbg, sbn, scb, scg, scn,
                     NP: tl.constexpr, BD: tl.constexpr, HAS_D: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_G: tl.constexpr):
    """Reverse pass over one time segment of BD channels (grid: channel blocks, batch,
    segments), in blocks of 16 steps from the stored state before each block: the states
    before its four groups of four are recomputed, then each group's states, and the adjoint
    lam_t = C_t dy_t + a_{t+1} lam_{t+1} runs back through them, entering the segment as
    a_{t_e} lam_{t_e} = G (from the segments after it; HAS_G) or zero. Writes du, d delta
    (rows, L); dB, dC summed over the block's channels (cpg / BD, batch, groups, N, L); dA, dD
    and d delta_bias summed over the segment's steps (n_seg * batch, channels[, N])."""
    block, b, seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ch, n, nmask, g, row, a_coef, A2, bias, d_skip, b_ptr, c_ptr = _channel_block(
        A, BIAS, DSKIP, BM, CM, block, b, channels, cpg, N, sbb, sbg, sbn, scb, scg, scn, BD, NP,
        HAS_BIAS, HAS_D)
    state_mask = nmask[None, :]
    u_ptr, delta_ptr = U + row * L, DELTA + row * L
    part = ((block - g * (cpg // BD)) * batch + b) * groups + g
    part_ptr = (part * N + n) * L  # (NP,) rows of this block's dB / dC parts
    if HAS_G:  # lam after the segment's last step is G with a_next = 1
        lam = tl.load(G + (row[:, None] * n_seg + (n_seg - 1 - seg)) * N + n[None, :],
                      mask=state_mask, other=0.0)
    else:
        lam = tl.zeros([BD, NP], tl.float32)
    a_next = tl.full([BD, NP], 1.0, tl.float32)
    dA = tl.zeros([BD, NP], tl.float32)
    dD = tl.zeros([BD], tl.float32)
    dbias = tl.zeros([BD], tl.float32)
    ckpt_start = seg * (seg_len // 16)  # segments are whole blocks of 16 steps
    ckpt_end = tl.minimum(ckpt_start + seg_len // 16, n_ckpt)
    for i in range(ckpt_end - ckpt_start):
        t16 = (ckpt_end - 1 - i) * 16
        h0 = tl.load(CKPT_H + (row[:, None] * n_ckpt + t16 // 16) * N + n[None, :],
                     mask=state_mask, other=0.0)
        h4 = _advance(h0, u_ptr, delta_ptr, b_ptr, c_ptr, bias, t16, L, nmask, A2, BD, NP,
                      SOFTPLUS)
        h8 = _advance(h4, u_ptr, delta_ptr, b_ptr, c_ptr, bias, t16 + 4, L, nmask, A2, BD, NP,
                      SOFTPLUS)
        h12 = _advance(h8, u_ptr, delta_ptr, b_ptr, c_ptr, bias, t16 + 8, L, nmask, A2, BD, NP,
                       SOFTPLUS)
        for j in tl.static_range(4):
            t0 = t16 + 12 - 4 * j
            h = h12 if j == 0 else (h8 if j == 1 else (h4 if j == 2 else h0))
            u, dt, raw, Bt, Ct = _load_steps(u_ptr, delta_ptr, b_ptr, c_ptr, bias, t0, L, nmask,
                                             SOFTPLUS)
            t = t0 + tl.arange(0, 4)
            tmask = (t < L)[None, :]
            dy = tl.load(DY + row[:, None] * L + t[None, :], mask=tmask, other=0.0)
            dy = dy.to(tl.float32)
            u0, u1, u2, u3 = _columns(u, BD)
            dt0, dt1, dt2, dt3 = _columns(dt, BD)
            dtu0, dtu1, dtu2, dtu3 = _columns(dt * u, BD)
            r0, r1, r2, r3 = _columns(raw, BD)
            dy0, dy1, dy2, dy3 = _columns(dy, BD)
            B0, B1, B2, B3 = _columns(Bt, NP)
            C0, C1, C2, C3 = _columns(Ct, NP)
            a0, a1 = _decay(dt0, A2), _decay(dt1, A2)
            a2, a3 = _decay(dt2, A2), _decay(dt3, A2)
            h1 = _update(h, a0, dtu0, B0)
            h2 = _update(h1, a1, dtu1, B1)
            h3 = _update(h2, a2, dtu2, B2)
            h4_ = _update(h3, a3, dtu3, B3)
            lam, du3, dd3, da3, db3, dc3 = _adjoint_step(
                h4_, lam, a_next, dt3, dtu3, u3, r3, dy3, a_coef, B3, C3, d_skip, SOFTPLUS)
            lam, du2, dd2, da2, db2, dc2 = _adjoint_step(
                h3, lam, a3, dt2, dtu2, u2, r2, dy2, a_coef, B2, C2, d_skip, SOFTPLUS)
            lam, du1, dd1, da1, db1, dc1 = _adjoint_step(
                h2, lam, a2, dt1, dtu1, u1, r1, dy1, a_coef, B1, C1, d_skip, SOFTPLUS)
            lam, du0, dd0, da0, db0, dc0 = _adjoint_step(
                h1, lam, a1, dt0, dtu0, u0, r0, dy0, a_coef, B0, C0, d_skip, SOFTPLUS)
            a_next = a0
            ddelta = tl.where(tmask, _columns_join(dd0, dd1, dd2, dd3, BD), 0.0)
            offs = row[:, None] * L + t[None, :]
            tl.store(DU + offs, _columns_join(du0, du1, du2, du3, BD).to(DU.dtype.element_ty),
                     mask=tmask)
            tl.store(DDELTA + offs, ddelta.to(DDELTA.dtype.element_ty), mask=tmask)
            bc_offs = part_ptr[:, None] + t[None, :]
            bc_mask = nmask[:, None] & tmask
            tl.store(DB_PART + bc_offs, _columns_join(db0, db1, db2, db3, NP), mask=bc_mask)
            tl.store(DC_PART + bc_offs, _columns_join(dc0, dc1, dc2, dc3, NP), mask=bc_mask)
            dA += da0 + da1 + da2 + da3
            dD += tl.sum(dy * u, 1)
            dbias += tl.sum(ddelta, 1)
    part_row = (seg * batch + b) * channels + ch
    tl.store(DA_PART + part_row[:, None] * N + n[None, :], dA, mask=state_mask)
    tl.store(DD_PART + part_row, dD)
    tl.store(DBIAS_PART + part_row, dbias)


# Tuned on an H200 with tools/analysis/bench_scan.py (--configs compares settings): channels per
# program and warps; the forward cuts the sequence into time segments when batch x channel
# blocks are fewer than SEGMENT_BELOW programs, into as many as make WANTED_PROGRAMS, each a
# multiple of SEG_ALIGN steps. Segments pay on the Mask R-CNN maps (2 images, few programs) and
# cost a second pass where the blocks already fill the GPU (DefMamba-S training stage 0, 576
# programs), hence the threshold.
MAX_BD, NUM_WARPS = 32, 2
SEGMENT_BELOW, WANTED_PROGRAMS, SEG_ALIGN = 264, 2112, 16
# ... and into at most MAX_SEGMENTS: the carry pass walks the segments one after the other, so
# hundreds of short segments (one 224x224 image: 9 programs) make it the bottleneck, while a
# Mask R-CNN stage 0 runs as fast with 53 segments as with 118 (bench_scan.py --cases b1 maskrcnn).
MAX_SEGMENTS = 64
# The backward's channels per program and warps, and the programs it wants before it cuts the
# reverse pass into time segments. One warp keeps the per-step sums over the block's channels
# (dB, dC) inside a warp. 16 x 1 beats 32 x 2 and 32 x 1 on most of DefMamba's training and
# Mask R-CNN shapes (bench_scan.py --bwd-configs 16x1 32x2 32x1).
BWD_MAX_BD, BWD_NUM_WARPS, WANTED_BWD_PROGRAMS = 16, 1, 4096
CKPT = 16  # steps between the states the backward starts from


def block_channels(cpg, max_bd=None):
    """The channel block: the largest power of two that divides the group size, <= max_bd
    (default MAX_BD)."""
    max_bd = MAX_BD if max_bd is None else max_bd
    bd = 1
    while bd < max_bd and cpg % (2 * bd) == 0:
        bd *= 2
    return bd


def segmentation(programs, length, align, segments=None, wanted=None, below=None,
                 most=None):
    """(number of segments, steps per segment): one segment from ``below`` programs on (default:
    ``wanted``), else as many as make ``wanted`` programs (default ``WANTED_PROGRAMS``, the
    forward's) to fill the GPU, but at most ``most``; segments are whole multiples of ``align``
    steps (a multiple of the checkpoint spacing)."""
    if segments is None:
        wanted = WANTED_PROGRAMS if wanted is None else wanted
        below = wanted if below is None else below
        most = length if most is None else most
        segments = 1 if programs >= below else max(1, min(-(-wanted // programs),
                                                          length // align, most))
    seg_len = -(-(-(-length // segments)) // align) * align
    return -(-length // seg_len), seg_len


class _Call:
    """Shapes, strides and launch settings of one scan call, shared by its kernels."""

    def __init__(self, u, A, B, D, delta_bias, softplus, segments):
        self.batch, self.channels, self.length = u.shape
        self.groups, self.n_state = B.shape[1], A.shape[1]
        self.cpg = self.channels // self.groups
        self.bd = block_channels(self.cpg)
        self.rows = self.batch * self.channels
        self.n_ckpt = -(-self.length // CKPT)
        self.n_seg, self.seg_len = segmentation(self.rows // self.bd, self.length, SEG_ALIGN,
                                                segments, below=SEGMENT_BELOW, most=MAX_SEGMENTS)
        self.meta = dict(NP=triton.next_power_of_2(self.n_state), BD=self.bd,
                         HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
                         num_warps=NUM_WARPS)

    def f32(self, *shape, device):
        return torch.empty(*shape, device=device, dtype=torch.float32)


def _forward_passes(call, u, delta, A, B, C, D, bias, y=None, ckpt_h=None):
    """The forward kernel: y and / or the backward's checkpoints; with
    segments first their end states and the state entering each (combine kernel)."""
    none = u  # placeholder for the pointers a variant does not touch
    D, bias = (none if t is None else t for t in (D, bias))
    args = (u, delta, A, B, C, D, bias)
    sizes = (call.length, call.channels, call.cpg, call.seg_len, call.n_ckpt, call.n_seg,
             call.n_state, *B.stride()[:3], *C.stride()[:3])
    meta = dict(call.meta, CKPT=CKPT)
    grid = (call.channels // call.bd, call.batch, call.n_seg)
    h0 = None
    if call.n_seg > 1:
        seg_h = call.f32(call.rows, call.n_seg, call.n_state, device=u.device)
        seg_p = torch.empty_like(seg_h)
        _scan_fwd_kernel[grid](*args, none, none, none, seg_h, seg_p, *sizes, HAS_H0=False,
                               WRITE_Y=False, WRITE_CKPT=False, WRITE_SEG=True, **meta)
        h0 = torch.empty_like(seg_h)
        total = call.rows * call.n_state
        _combine_segments_kernel[(triton.cdiv(total, 256),)](seg_h, seg_p, h0, total,
                                                             call.n_seg, call.n_state, BLOCK=256)
    pick = lambda t: none if t is None else t  # noqa: E731
    _scan_fwd_kernel[grid](*args, pick(y), pick(h0), pick(ckpt_h), none, none, *sizes,
                           HAS_H0=h0 is not None, WRITE_Y=y is not None,
                           WRITE_CKPT=ckpt_h is not None, WRITE_SEG=False, **meta)


def scan_fwd(u, delta, A, B, C, D, delta_bias, softplus, segments=None, keep_checkpoints=False):
    """u, delta (b, channels, L) contiguous; A (channels, N) float32; B, C (b, G, N, L) with unit
    step stride; D, delta_bias (channels,) float32 or None. Returns y (b, channels, L) in u's
    dtype, and the backward's checkpoints (or None). ``segments`` overrides the automatic time
    split (tests).

    ``keep_checkpoints``: where the sequence is cut into segments (detection maps), the pass that
    writes y also writes the states the backward starts from, so that :func:`scan_bwd` need not
    run the forward's two passes again; they cost as much memory as an fp32 copy of u (N = 16).
    Unsegmented calls (classification batches) keep nothing: there the backward's one extra pass
    is cheaper than holding the states until the backward."""
    call = _Call(u, A, B, D, delta_bias, softplus, segments)
    y = torch.empty_like(u)
    ckpt_h = None
    if keep_checkpoints and call.n_seg > 1:
        ckpt_h = call.f32(call.rows, call.n_ckpt, call.n_state, device=u.device)
    _forward_passes(call, u, delta, A, B, C, D, delta_bias, y=y, ckpt_h=ckpt_h)
    return y, ckpt_h


def scan_bwd(dy, u, delta, A, B, C, D, delta_bias, softplus, segments=None, ckpt_h=None):
    """Gradients of :func:`scan_fwd` (dy contiguous like u) -> du, d delta (u's dtype), dA
    (float32), dB, dC (B's and C's dtype, contiguous), dD, d delta_bias (float32, or None where
    the input was None). The states are recomputed from one every 16 steps: ``ckpt_h``, kept by
    the forward, or else written here by a forward pass.
    Where batch x channel blocks are fewer than ``WANTED_BWD_PROGRAMS`` the reverse pass is cut
    into time segments (``segments`` overrides the count): the adjoint each segment hands to the
    one before it is found first (its own adjoint from zero, then a carry pass over segments),
    so that all segments run at once."""
    call = _Call(u, A, B, D, delta_bias, softplus, segments)
    dev = u.device
    if ckpt_h is None:
        ckpt_h = call.f32(call.rows, call.n_ckpt, call.n_state, device=dev)
        _forward_passes(call, u, delta, A, B, C, D, delta_bias, ckpt_h=ckpt_h)
    bd = block_channels(call.cpg, BWD_MAX_BD)
    meta = dict(call.meta, BD=bd, num_warps=BWD_NUM_WARPS)
    n_seg, seg_len = segmentation(call.rows // bd, call.length, CKPT, segments,
                                  WANTED_BWD_PROGRAMS)
    none = u
    grid = (call.channels // bd, call.batch, n_seg)
    carry = None
    if n_seg > 1:
        seg_e = call.f32(call.rows, n_seg, call.n_state, device=dev)
        seg_p, carry = torch.empty_like(seg_e), torch.empty_like(seg_e)
        _adjoint_carry_kernel[grid](
            delta, A, C, none if delta_bias is None else delta_bias, dy, seg_e, seg_p,
            call.length, call.channels, call.cpg, seg_len, n_seg, call.n_state,
            *C.stride()[:3], NP=meta['NP'], BD=bd, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=softplus, num_warps=BWD_NUM_WARPS)
        total = call.rows * call.n_state
        _combine_segments_kernel[(triton.cdiv(total, 256),)](seg_e, seg_p, carry, total, n_seg,
                                                             call.n_state, BLOCK=256)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    parts = (call.cpg // bd, call.batch, call.groups, call.n_state, call.length)
    db_part, dc_part = call.f32(*parts, device=dev), call.f32(*parts, device=dev)
    da_part = call.f32(n_seg * call.batch, call.channels, call.n_state, device=dev)
    dd_part = call.f32(n_seg * call.batch, call.channels, device=dev)
    dbias_part = torch.empty_like(dd_part)
    _scan_bwd_kernel[grid](
        u, delta, A, B, C, none if D is None else D, none if delta_bias is None else delta_bias,
        dy, ckpt_h, none if carry is None else carry, du, ddelta, db_part, dc_part, da_part,
        dd_part, dbias_part, call.length, call.channels, call.cpg, call.n_ckpt, seg_len, n_seg,
        call.n_state, call.batch, call.groups, *B.stride()[:3], *C.stride()[:3],
        HAS_G=carry is not None, **meta)
    return (du, ddelta, da_part.sum(0), db_part.sum(0).to(B.dtype), dc_part.sum(0).to(C.dtype),
            dd_part.sum(0) if D is not None else None,
            dbias_part.sum(0) if delta_bias is not None else None)
