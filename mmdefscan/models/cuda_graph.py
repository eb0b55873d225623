"""Opt-in CUDA graphs for a backbone's training forward and backward (``cuda_graph=True``).

A DefMamba training step launches a few hundred small kernels per block, and on an H200 the
host cannot issue them as fast as the GPU runs them (docs/performance.md, round 4). Where the
input shape is static (classification, segmentation crops) the backbone's forward and backward
can be captured once with ``torch.cuda.make_graphed_callables`` and replayed: one launch each.
The heads, the loss and the optimizer stay eager, so any mm config, AMP wrapper, gradient clip
or optimizer works unchanged.

What runs the graph: a training-mode forward with grad enabled, on CUDA, with the input shape,
dtype, autocast dtype and trainable parameters (and input ``requires_grad``) of the first such
call. Anything else (eval, no_grad, another shape such as a smaller last batch) runs eagerly;
the first such input is reported in the log.
The capture itself runs three eager warm-up steps; BatchNorm statistics are restored after them.
Outputs and saved activations live in the graph's static buffers until the next replay, so a
second forward before the first one's backward (two views of a self-supervised method) runs
eagerly. Run on one GPU; under DistributedDataParallel the parameter gradients reach its hooks
through autograd as usual, but that combination has not been run.
"""
import weakref

import torch
import torch.nn as nn
from mmengine.logging import print_log


class _EagerForward(nn.Module):
    """The backbone's eager forward as a module of its own for ``make_graphed_callables``
    (which replaces the forward of the module it is given). The backbone is not registered as
    a submodule: the wrapper adds no state-dict keys and ``modules()`` does not loop."""

    def __init__(self, backbone):
        super().__init__()
        self.__dict__['backbone'] = backbone

    def parameters(self, recurse=True):
        return self.backbone.parameters(recurse)

    def buffers(self, recurse=True):
        return self.backbone.buffers(recurse)

    def forward(self, x):
        return self.backbone.forward_eager(x)


class CudaGraphCache:
    """The captured forward + backward of one backbone and the state it was captured for."""

    def __init__(self):
        self.key = None
        self.graphed = None
        self.reported = set()
        self.node = None  # weak reference to the autograd node of the last replay
        self.backward_ran = True

    # a copied model (EMA hooks deepcopy it) or a pickled one captures its own graph
    def __deepcopy__(self, memo):
        return CudaGraphCache()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    @staticmethod
    def applies(backbone, x):
        return backbone.training and x.is_cuda and torch.is_grad_enabled()

    @staticmethod
    def state(backbone, x):
        autocast = torch.is_autocast_enabled('cuda') and torch.get_autocast_dtype('cuda')
        return (tuple(x.shape), x.dtype, x.device, autocast, x.requires_grad,
                tuple(p.requires_grad for p in backbone.parameters()))

    def in_use(self):
        """True while the last replay's buffers may still be needed: its autograd node is alive
        and has not run its backward."""
        return self.node is not None and self.node() is not None and not self.backward_ran

    def _backward_done(self, grad_inputs, grad_outputs):
        self.backward_ran = True

    def report_once(self, backbone, reason, message):
        if reason not in self.reported:
            self.reported.add(reason)
            print_log(f'{type(backbone).__name__}: {message}', logger='current')

    def __call__(self, backbone, x):
        key = self.state(backbone, x)
        if self.graphed is None:
            self.capture(backbone, x, key)
        if key != self.key:  # reported once: detection inputs would repeat it every batch
            self.report_once(backbone, 'other input', f'cuda_graph was captured for input '
                             f'{self.key[:2]} with autocast {self.key[3]}; this call '
                             f'({key[:2]}, autocast {key[3]}) and any other input run eagerly')
            return backbone.forward_eager(x)
        if self.in_use():
            self.report_once(backbone, 'in use', 'a second forward before the backward of the '
                             "first: it runs eagerly (the graph's buffers hold the first)")
            return backbone.forward_eager(x)
        outs = self.graphed(x)
        node = outs[0].grad_fn
        if node is not None:
            self.node, self.backward_ran = weakref.ref(node), False
            node.register_hook(self._backward_done)
        return outs

    def capture(self, backbone, x, key):
        if getattr(backbone, 'with_cp', False):
            raise ValueError(f'{type(backbone).__name__}: cuda_graph=True cannot be combined with '
                             'with_cp=True (the graph already saves the launches; checkpointing '
                             'would recompute inside it)')
        # the warm-up steps update BatchNorm statistics: put them back afterwards
        buffers = [(b, b.clone()) for b in backbone.buffers()]
        autocast = key[3]
        try:
            with torch.autocast('cuda', dtype=autocast or torch.float16, enabled=bool(autocast),
                                cache_enabled=False):
                self.graphed = torch.cuda.make_graphed_callables(
                    _EagerForward(backbone),
                    (x.detach().clone().requires_grad_(x.requires_grad),), allow_unused_input=True)
        except RuntimeError as err:
            raise RuntimeError(f'{type(backbone).__name__}: capturing the CUDA graphs failed '
                               f'({str(err).splitlines()[0]}); build it with cuda_graph=False') \
                from err
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        self.key = key
        print_log(f'{type(backbone).__name__}: captured the training forward and backward in '
                  f'CUDA graphs for input {tuple(x.shape)} {x.dtype}, autocast {autocast}',
                  logger='current')
