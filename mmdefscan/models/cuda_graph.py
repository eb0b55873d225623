"""CUDA graphs for a backbone's training forward and backward, and for its inference forward
(``cuda_graph=True``; the ImageNet configs, and the UperNet and Mask R-CNN 1x configs of
DefMamba and Spatial-Mamba, switch it on).

A DefMamba training step launches a few hundred small kernels per block, and on a fast GPU the
host cannot issue them as fast as the GPU runs them. For a given input shape the backbone's
forward and backward can be captured once with ``torch.cuda.make_graphed_callables`` and
replayed: one launch each. The heads, the loss and the optimizer stay eager, so any mm config,
AMP wrapper, gradient clip, gradient accumulation or optimizer works unchanged. Inference waits
on the host too, and its time then depends on the host's speed more than on the GPU's.
Measurements and the commands behind them: docs/cuda_graph.md and docs/benchmark.md.

What runs a graph, on CUDA: a training-mode forward with grad enabled, or an eval-mode forward
without grad (``no_grad`` or ``inference_mode``), whose input shape, dtype, autocast dtype and
trainable parameters (and input ``requires_grad``) have a graph. The first ``max_shapes`` such
inputs of each mode (``cuda_graph=True``: 8, ``cuda_graph=N``: N) are captured when they first
come: classification and segmentation crops need one, a detector's padded batches come in
several (``tools/analysis/batch_shapes.py CONFIG`` counts how many of a dataset's batches N
graphs would replay).
All graphs share one memory pool, so their activations may reuse one another's memory; each keeps
its own outputs and parameter gradients (about 1-2 GiB per Mask R-CNN shape, docs/cuda_graph.md).
A new input is captured only while
the device keeps room for it: a tenth of its memory (or the largest capture so far, if more) must
stay free besides the capture itself, so that the eager calls of other shapes still fit; once a
capture is refused no more are made. Anything else (a training-mode forward without grad, an
eval-mode one with grad, shapes past the limit or past the memory) runs eagerly; the first such
input is reported in the log, and every 1000 training calls of which some ran eagerly the log
counts the replayed and the eager ones (how much of a detector's schedule the graphs serve).
Each training capture runs three eager warm-up steps; BatchNorm statistics are restored after
them. Outputs and saved activations live in the graphs' pool until the next replay, so a second
forward before the first one's backward (two views of a self-supervised method) runs eagerly,
and an inference replay returns copies of its outputs.
The capture runs on stand-ins of the parameters (see :func:`_graphable`), which is what makes
it work under DistributedDataParallel. A backbone with SyncBatchNorm under more than one process
trains eagerly (its collectives were never captured here).
"""
import collections
import contextlib
import time
import weakref

import torch
import torch.nn as nn
from mmengine.logging import print_log
from torch.utils._pytree import tree_map


class _EagerForward(nn.Module):
    """The backbone's eager forward as a module of its own, for ``torch.func.functional_call``
    to run on stand-ins of the parameters. Only the capture builds one and the backbone never
    holds it as a submodule, so it adds no state-dict keys."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.forward_eager(x)


def _graphable(backbone):
    """(function(x, *parameters) running the backbone's eager forward on the given parameter
    tensors, the capture's stand-ins for the parameters). The stand-ins are new leaves on the
    parameters' storage: the captured backward must not reach the parameters' own gradient
    accumulators, which DistributedDataParallel creates (and keeps) on the default stream,
    where a captured backward may not wait. Capturing the backbone itself under DDP fails
    ("operation would make the legacy stream depend on a capturing blocking stream"); with the
    stand-ins DDP trains. The replay takes the real
    parameters as inputs, so their gradients reach DDP's hooks through autograd. One path with
    and without DDP."""
    names, params = zip(*(('backbone.' + name, p) for name, p in backbone.named_parameters()))
    stand_ins = tuple(p.detach().requires_grad_(p.requires_grad) for p in params)
    module = _EagerForward(backbone)

    def forward(x, *weights):
        return torch.func.functional_call(module, dict(zip(names, weights)), (x,))
    return forward, stand_ins


@contextlib.contextmanager
def _capturing(backbone, autocast, what):
    """Around a capture: the caller's autocast entered again without its weight cache, so that
    the weights' casts are part of the graph; a failed capture becomes one clear error."""
    try:
        with torch.autocast('cuda', dtype=autocast or torch.float16, enabled=bool(autocast),
                            cache_enabled=False):
            yield
    except RuntimeError as err:
        raise RuntimeError(f'{type(backbone).__name__}: capturing the {what} failed '
                           f'({str(err).splitlines()[0]}); build it with cuda_graph=False') \
            from err


def _syncs_across_processes(backbone):
    """Whether a training forward would run collectives: a SyncBatchNorm (DAMamba's default
    norm, or mmengine's ``sync_bn``) in a process group of more than one process."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
            and any(isinstance(m, nn.SyncBatchNorm) for m in backbone.modules()))


DEFAULT_MAX_SHAPES = 8
REPORT_EVERY = 1000  # training calls between the counts of replayed and eager ones
KEEP_FREE = 0.1  # the share of the device's memory a capture leaves free


def free_and_total_memory(device):
    """(bytes free on the device outside PyTorch's cache, bytes in all)."""
    return torch.cuda.mem_get_info(device)


def held_memory(device):
    """(bytes PyTorch's caching allocator holds on the device, graph pools included; bytes its
    tensors take). A capture may take its pool's memory from blocks already cached (no growth
    of the first), but its outputs and gradients stay allocated (growth of the second)."""
    return torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)


class CudaGraphCache:
    """The captured forwards + backwards of one backbone, one per input state, in one pool."""

    def __init__(self, max_shapes=DEFAULT_MAX_SHAPES):
        if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f'cuda_graph: expected True or a number of input shapes >= 1, '
                             f'got {max_shapes!r}')
        self.max_shapes = max_shapes
        self.graphs = {}  # state() -> graphed forward
        self.pool = None  # the memory pool all captures share
        self.reported = set()
        self.node = None  # weak reference to the autograd node of the last replay
        self.backward_ran = True
        self.syncs = None  # whether the forward runs collectives (found at the first call)
        self.capture_cost = 0  # the largest memory growth over one capture (bytes)
        # bytes the captures keep allocated: outputs, gradients, static inputs (the pool's
        # other memory, where the replays write activations, is only reserved)
        self.kept_allocated = 0
        self.out_of_room = False  # a capture was refused for memory: no more captures
        self.calls = collections.Counter()  # why the training calls ran eagerly (None: replayed)

    @classmethod
    def from_option(cls, cuda_graph):
        """The backbones' ``cuda_graph`` argument: False / None, True, or a number of shapes."""
        if cuda_graph is None or cuda_graph is False:
            return None
        return cls() if cuda_graph is True else cls(cuda_graph)

    # a copied model (EMA hooks deepcopy it) or a pickled one captures its own graphs
    def __deepcopy__(self, memo):
        return CudaGraphCache(self.max_shapes)

    def __getstate__(self):
        return {'max_shapes': self.max_shapes}

    def __setstate__(self, state):
        self.__init__(state.get('max_shapes', DEFAULT_MAX_SHAPES))

    @staticmethod
    def applies(backbone, x):
        """A training forward with grad, or an eval forward without (inference), on CUDA."""
        return x.is_cuda and backbone.training == torch.is_grad_enabled()

    @staticmethod
    def state(backbone, x):
        """The graph's key; its last item is True for training, False for inference."""
        autocast = torch.is_autocast_enabled('cuda') and torch.get_autocast_dtype('cuda')
        return (tuple(x.shape), x.dtype, x.device, autocast, x.requires_grad,
                tuple(p.requires_grad for p in backbone.parameters()),
                torch.is_inference_mode_enabled(), backbone.training)

    def in_use(self):
        """True while the last replay's buffers may still be needed: its autograd node is alive
        and has not run its backward."""
        return self.node is not None and self.node() is not None and not self.backward_ran

    def _backward_done(self, grad_inputs, grad_outputs):
        """Post-hook of a replay's backward node. The graph returns its static gradient buffers,
        and autograd would keep them as the parameters' ``.grad``: the next replay would then
        overwrite a gradient still being accumulated (``accumulative_counts``). Hand over
        copies, made by one multi-tensor kernel."""
        self.backward_ran = True
        present = [g for g in grad_inputs if g is not None]
        copies = iter(torch._foreach_mul(present, 1.0) if present else ())
        return tuple(None if g is None else next(copies) for g in grad_inputs)

    def report_once(self, backbone, reason, message):
        if reason not in self.reported:
            self.reported.add(reason)
            print_log(f'{type(backbone).__name__}: {message}', logger='current')

    def __call__(self, backbone, x):
        graphed, eager_reason = self._graph_for(backbone, x)
        if backbone.training:
            self._count(backbone, eager_reason)
        if graphed is None:
            return backbone.forward_eager(x)
        if not backbone.training:
            return graphed(x)
        outs = graphed(x, *backbone.parameters())
        node = outs[0].grad_fn
        if node is not None:
            self.node, self.backward_ran = weakref.ref(node), False
            node.register_hook(self._backward_done)
        return outs

    def _graph_for(self, backbone, x):
        """(the graph to replay for x, captured now if it is new, None) or (None, why x runs
        eagerly); each reason is logged the first time."""
        if self.in_use():
            self.report_once(backbone, 'in use', 'a second forward before the backward of the '
                             "first: it runs eagerly (the graphs' buffers hold the first)")
            return None, 'while a graph was in use'
        if backbone.training:  # an eval-mode SyncBatchNorm runs no collectives
            if self.syncs is None:  # the model is built (and SyncBN converted) before training
                self.syncs = _syncs_across_processes(backbone)
            if self.syncs:
                self.report_once(backbone, 'sync', 'SyncBatchNorm under several processes: the '
                                 'training forward runs eagerly (collectives inside a CUDA graph '
                                 'are untested here; cuda_graph=False silences this)')
                return None, 'with SyncBatchNorm'
        key = self.state(backbone, x)
        graphed = self.graphs.get(key)
        if graphed is None:
            mode = 'training' if backbone.training else 'inference'
            same_mode = [k for k in self.graphs if k[-1] == key[-1]]
            if len(same_mode) >= self.max_shapes:  # reported once: it may come every batch
                shapes = ', '.join(f'{k[0]} autocast {k[3]}' for k in same_mode)
                self.report_once(backbone, 'full ' + mode, f'cuda_graph holds {mode} graphs for '
                                 f'{self.max_shapes} inputs ({shapes}); this call ({key[0]}, '
                                 f'autocast {key[3]}) and any other new input run eagerly '
                                 '(cuda_graph=N keeps N)')
                return None, 'past the limit of graphs'
            if not self._room_for_another(backbone, x, key):
                return None, 'short of device memory'
            before, start = held_memory(x.device), time.perf_counter()
            graphed = self.graphs[key] = self.capture(backbone, x, key)
            growth = [now - then for now, then in zip(held_memory(x.device), before)]
            self.capture_cost = max(self.capture_cost, *growth)
            self.kept_allocated += growth[1]
            what = 'training forward and backward' if key[-1] else 'inference forward'
            print_log(f'{type(backbone).__name__}: captured the {what} in CUDA graphs for '
                      f'input {key[0]} {key[1]}, autocast {key[3]} in '
                      f'{time.perf_counter() - start:.1f} s, {max(growth) / 2**30:.2f} GiB more '
                      f'held ({len(same_mode) + 1} of at most {self.max_shapes} inputs)',
                      logger='current')
        return graphed, None

    def _room_for_another(self, backbone, x, key):
        """Whether the device keeps room for one more capture (its expected cost is the
        largest so far) and, besides it, KEEP_FREE of its memory or that cost, whichever is
        larger. The first refusal is logged and ends the captures."""
        if not self.out_of_room:
            free, total = free_and_total_memory(x.device)
            needed = self.capture_cost + max(self.capture_cost, KEEP_FREE * total)
            self.out_of_room = free < needed
            if self.out_of_room:
                gib = 2 ** 30
                self.report_once(backbone, 'memory', f'cuda_graph: {free / gib:.1f} GiB free on '
                                 f'the device, {needed / gib:.1f} GiB needed for another capture '
                                 f'(the largest so far took {self.capture_cost / gib:.1f} GiB); '
                                 f'this input {key[0]} and any other new one run eagerly; '
                                 f'{len(self.graphs)} graphs replay')
        return not self.out_of_room

    def _count(self, backbone, eager_reason):
        """Tally the training calls; every ``REPORT_EVERY`` of them in which some ran eagerly,
        log how many replayed (how much of a detector's schedule the graphs serve)."""
        self.calls[eager_reason] += 1
        if sum(self.calls.values()) < REPORT_EVERY:
            return
        replayed = self.calls.pop(None, 0)
        if self.calls:
            eager = ', '.join(f'{n} {reason}' for reason, n in self.calls.most_common())
            graphs = f'{len(self.graphs)} graph' + ('s' if len(self.graphs) != 1 else '')
            print_log(f'{type(backbone).__name__}: cuda_graph, the last {REPORT_EVERY} training '
                      f'calls: {replayed} replayed from {graphs}; eager: {eager}',
                      logger='current')
        self.calls.clear()

    def capture(self, backbone, x, key):
        """The graphed forward of ``backbone`` for inputs like ``x`` (in the shared pool), called
        as ``graphed(x, *backbone.parameters())`` in training, ``graphed(x)`` in inference."""
        if getattr(backbone, 'with_cp', False):
            raise ValueError(f'{type(backbone).__name__}: cuda_graph=True cannot be combined with '
                             'with_cp=True (the graph already saves the launches; checkpointing '
                             'would recompute inside it)')
        autocast = key[3]
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        if not key[-1]:
            return self._capture_inference(backbone, x, autocast)
        # the warm-up steps update BatchNorm statistics: put them back afterwards
        buffers = [(b, b.clone()) for b in backbone.buffers()]
        forward, stand_ins = _graphable(backbone)
        with _capturing(backbone, autocast, 'CUDA graphs'):
            graphed = torch.cuda.make_graphed_callables(
                forward, (x.detach().clone().requires_grad_(x.requires_grad), *stand_ins),
                allow_unused_input=True, pool=self.pool)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        return graphed

    def _capture_inference(self, backbone, x, autocast):
        """An eval forward without grad, captured after three eager calls on a side stream (they
        compile the Triton kernels and pick cuDNN's algorithms outside the capture). The
        replay returns copies of the outputs: the next replay overwrites the graph's own."""
        static_x = x.detach().clone()
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(x.device)
        with _capturing(backbone, autocast, 'inference CUDA graph'):
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    backbone.forward_eager(static_x)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            with torch.cuda.graph(graph, pool=self.pool):
                static_outs = backbone.forward_eager(static_x)

        def replay(x):
            static_x.copy_(x)
            graph.replay()
            return tree_map(torch.clone, static_outs)
        return replay
