"""Compile every Triton kernel of mmdefscan for an sm_90 GPU target, on a machine without a GPU.

Run by tests/test_triton_kernels.py in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter
accepts code the compiler refuses, e.g. a plain-float module global inside a kernel).
Prints one ``compiled <kernel>`` line per kernel and variant.
"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mmdefscan.ops.kernels import (adaptive_sample_triton, deform_sample_triton,
                                   depthwise_conv_triton, layer_norm_triton, scan_merge_triton, selective_scan_triton,
                                   state_fusion_triton)

# pointers default to fp32; index pointers and low-precision activations are named here
INDEX = {'INV': '*i32', 'ORDER': '*i64'}
FLOATS = {'eps'}


def compile_for_sm90(kernel, constexprs, sizes, activations=(), activation='*bf16'):
    """sizes: the one-letter upper-case integer arguments (lower-case ones are integers too)."""
    sizes = set(sizes)
    signature = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            signature[name] = 'constexpr'
        elif name in INDEX:
            signature[name] = INDEX[name]
        elif name in FLOATS:
            signature[name] = 'fp32'
        elif name[0].isupper() and name not in sizes:
            signature[name] = activation if name in activations else '*fp32'
        else:
            signature[name] = 'i32'
    triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                   target=GPUTarget('cuda', 90, 32))
    print('compiled', kernel.__name__, constexprs, flush=True)


def main():
    merge = dict(BLOCK_L=64, BLOCK_D=32)
    compile_for_sm90(scan_merge_triton._merge_fwd_kernel, dict(SAVE_Y=True, **merge), 'LD',
                     activations=('YS', 'Z', 'OUT', 'Y'))
    compile_for_sm90(scan_merge_triton._merge_bwd_kernel, merge, 'LD',
                     activations=('G', 'Z', 'DYS', 'DZ'))
    compile_for_sm90(state_fusion_triton._fuse_read_out_kernel, dict(BLOCK_D=32, BLOCK_L=128),
                     'HEIGHT WIDTH D'.split(), activations=('C', 'U'))
    compile_for_sm90(state_fusion_triton._fuse_read_out_bwd_kernel, dict(BLOCK_D=32, BLOCK_L=128),
                     'HEIGHT WIDTH D'.split(), activations=('C', 'U', 'DU'))
    compile_for_sm90(state_fusion_triton._fuse_state_grad_kernel, dict(BLOCK_D=32, BLOCK_L=128),
                     'HEIGHT WIDTH D'.split())
    compile_for_sm90(adaptive_sample_triton._adaptive_sample_kernel, dict(BLOCK_C=16, BLOCK_L=128),
                     'HEIGHT WIDTH C G'.split(), activations=('V', 'OFF', 'OUT'))
    for block_c in (4, 16):  # the channels of one group per tile: 16, or fewer for small groups
        compile_for_sm90(adaptive_sample_triton._adaptive_sample_bwd_kernel,
                         dict(BLOCK_C=block_c, BLOCK_L=128), 'HEIGHT WIDTH C CPG'.split(),
                         activations=('V', 'OFF', 'G'))
    compile_for_sm90(deform_sample_triton._sample_sort_fwd_kernel,
                     dict(BLOCK_C=deform_sample_triton.BLOCK_CH,
                          BLOCK_T=deform_sample_triton.BLOCK_TOKENS), 'DHWL',
                     activations=('X', 'OUT'))
    for fused in (False, True):
        flags = dict(HAS_SCALE=fused, GELU=fused, BLOCK_M=32, BLOCK_N=128)
        compile_for_sm90(layer_norm_triton._ln_fwd_kernel, flags, 'LN', activations=('Y',))
        compile_for_sm90(layer_norm_triton._ln_bwd_kernel, flags, 'LN',
                         activations=('X', 'DY', 'DX'))
    scan = selective_scan_triton
    flags = dict(NP=16, BD=scan.MAX_BD, HAS_D=True, HAS_BIAS=True, SOFTPLUS=True)
    for variant in (dict(HAS_H0=False, WRITE_Y=False, WRITE_CKPT=False, WRITE_SEG=True),
                    dict(HAS_H0=True, WRITE_Y=True, WRITE_CKPT=False, WRITE_SEG=False),
                    dict(HAS_H0=True, WRITE_Y=False, WRITE_CKPT=True, WRITE_SEG=False),
                    dict(HAS_H0=True, WRITE_Y=True, WRITE_CKPT=True, WRITE_SEG=False)):
        compile_for_sm90(scan._scan_fwd_kernel, dict(**flags, CKPT=scan.CKPT, **variant), 'LN',
                         activations=('U', 'DELTA', 'BM', 'CM', 'Y'))
    for carried in (False, True):
        compile_for_sm90(scan._scan_bwd_kernel, dict(flags, BD=scan.BWD_MAX_BD, HAS_G=carried),
                         'LN', activations=('U', 'DELTA', 'BM', 'CM', 'DY', 'DU', 'DDELTA'))
    compile_for_sm90(scan._adjoint_carry_kernel,
                     dict(NP=16, BD=scan.BWD_MAX_BD, HAS_BIAS=True, SOFTPLUS=True), 'LN',
                     activations=('DELTA', 'CM', 'DY'))
    compile_for_sm90(scan._combine_segments_kernel, dict(BLOCK=256), 'N')
    conv, tile = depthwise_conv_triton, dict(BLOCK_H=8, BLOCK_W=128)
    for flip in (False, True):  # the forward (bias) and the input gradient (mirrored, no bias)
        compile_for_sm90(conv._dwconv_kernel, dict(K=9, FLIP=flip, HAS_BIAS=not flip, **tile),
                         'CHANNELS HEIGHT WIDTH'.split(), activations=('X', 'OUT'))
    compile_for_sm90(conv._dwconv_wgrad_kernel, dict(K=9, **tile), 'HEIGHT WIDTH'.split(),
                     activations=('X', 'DY'))

if __name__ == '__main__':
    main()
