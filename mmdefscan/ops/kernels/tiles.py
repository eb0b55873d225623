"""Tile helpers shared by the Triton kernels."""
import triton
import triton.language as tl


@triton.jit
def token_channel_tile(L, D, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The (tokens x channels) tile of a program on grid (token blocks, channel blocks, batch):
    batch index, token and channel indices, the token mask and the tile mask."""
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tmask = tok < L
    return tl.program_id(2), tok, ch, tmask, tmask[:, None] & (ch < D)[None, :]
