"""Small UNets on the CPU run their plain calls as frozen TorchScript graphs: the same ops, without Python between.

The lab's UNet has 1.8M parameters and runs about 800 ops per forward, most of them on tensors of a few hundred
kilobytes, so the Python between the ops (diffusers' modules, the attention processors) is a real share of a
forward, and while one batch-split worker runs Python the other waits for the GIL. `torch.jit.trace` records one
forward's ops and `torch.jit.freeze` folds the weights in as constants, so that the graph runs in C++ without the
GIL. Measured at batch 15, one thread: 5.1-5.8 ms a sample as a graph against 5.4-6.6 in Python alone, and
5.3-5.6 against 5.5-8.0 with two such threads at once (README has the whole grid before and after).

A graph is traced per signature - the inputs' shapes and the timestep's dtype, what each attention layer's
processor does (its `computation_key()`), and the rows PAG and SEG mark for perturbation
(engine/guiders/perturb.py) - on first use, under a lock: every signature of one image's batch (up to ONE_IMAGE
rows), and the first MAX_GRAPHS of bigger batches; later signatures run diffusers' forward. None is forgotten to make room: TorchScript keeps about 45 MB of every trace
(its graph and frozen constants) for the life of the process, so a trace forgotten and made again only adds to the
process's memory, while a fixed number of traces bounds it. Only these calls are graphs:
float32 on the CPU, no autograd, every attention processor able to say what it does, and no argument beyond the
sample, the timestep, the prompt embeddings and the perturbed rows. Anything else - ControlNet residuals, SDXL's
added conditioning, attention maps (engine/attention.py), FLOP counting (plain.py) - runs diffusers' forward as it is. Models
above MAX_PARAMETERS keep diffusers' forward always: their ops are long enough that Python costs them little, and
freezing would copy their weights. A graph holds the weights as they were when it was traced: the engine serves
models as loaded; whatever changes a UNet's weights afterwards must give it a new GraphForward (`use_graphs`).

Given the engine's C loops (engine/cpu/kernels.py), a graph runs channels-last: oneDNN reorders NCHW activations
on every convolution (a 64->64 3x3 convolution at 16x16, batch 30, one core: 7.0 ms NCHW, 4.5 ms channels-last),
and what made channels-last lose before, torch's group norm on it, becomes the C loop, which takes the SiLU after
a resnet's norm too. The graph holds channels-last copies of the convolution weights (the module keeps its own)
and drops the copy back to NCHW before each transformer's proj_out. A batch-30 forward on one core: 6.3-6.7 ms a
sample before, 5.2-5.3 after. Where the loops have AVX-512, the graph's 3x3 convolutions of stride 1 between
multiples of 16 channels (24 of the lab UNet's 55) become the Winograd loop, their kernels transformed once here,
and its 1x1 convolutions one matrix product each.
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from collections import OrderedDict

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from .kernels import winograd_serves, winograd_weights
from .plain import is_plain

MAX_PARAMETERS = 50_000_000
MAX_GRAPHS = 6  # signatures traced per model (batch sizes x perturbed rows x prompt lengths) beyond one image's
ONE_IMAGE = 3  # batches up to this (one image's branches: c, u, p) are always traced: where a graph saves most

log = logging.getLogger(__name__)


class _Plain(torch.nn.Module):
    """The UNet's call as a module with tensor inputs and one tensor out: what gets traced. PAG's and SEG's row
    marks are a constant of the graph (its signature holds them). `channels_last`: the sample goes in channels-last
    and the prediction comes back in torch's default layout."""

    def __init__(self, unet: torch.nn.Module, perturb: torch.Tensor | None, channels_last: bool = False):
        super().__init__()
        self.unet = unet
        self.kwargs = None if perturb is None else {"perturb": perturb}
        self.channels_last = channels_last

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        out = type(self.unet).forward(self.unet, sample, timestep, encoder_hidden_states,
                                      cross_attention_kwargs=self.kwargs, return_dict=False)[0]
        return out.contiguous() if self.channels_last else out


# Group norms, and the SiLU after one, as the C loop (engine/cpu/norm.c) on channels-last activations.
_NORM_SILU = """graph(%x, %groups, %weight, %bias, %eps, %cudnn):
    %y = aten::group_norm(%x, %groups, %weight, %bias, %eps, %cudnn)
    %z = aten::silu(%y)
    return (%z)"""
_NORM = """graph(%x, %groups, %weight, %bias, %eps, %cudnn):
    %z = aten::group_norm(%x, %groups, %weight, %bias, %eps, %cudnn)
    return (%z)"""
_LOOP = """graph(%x, %groups, %weight, %bias, %eps, %cudnn):
    %silu : bool = prim::Constant[value={silu}]()
    %z = {namespace}::group_norm(%x, %weight, %bias, %groups, %eps, %silu)
    return (%z)"""


def _norms_as_loops(graph: torch._C.Graph, namespace: str) -> int:
    """Rewrite a frozen graph's group norms (with the SiLU that follows, where one does) into calls of the norm
    loop; returns how many calls the graph then makes. Weights and biases must be constants (a frozen graph's)."""
    for node in graph.findAllNodes("aten::group_norm"):
        if any(node.inputsAt(i).node().kind() != "prim::Constant" or node.inputsAt(i).type().kind() != "TensorType"
               for i in (2, 3)):
            return 0  # a norm without weights (or with computed ones) stays torch's, and so do all the others
    torch._C._jit_pass_custom_pattern_based_rewrite_graph(_NORM_SILU, _LOOP.format(silu=1, namespace=namespace),
                                                           graph)
    torch._C._jit_pass_custom_pattern_based_rewrite_graph(_NORM, _LOOP.format(silu=0, namespace=namespace), graph)
    return len(graph.findAllNodes(f"{namespace}::group_norm"))


def _drop_layout_copies(graph: torch._C.Graph) -> int:
    """Drop the `.contiguous()` calls whose every use is a convolution's input: a convolution reads any layout, and
    with channels-last weights it would only copy such an input back (diffusers' transformers end so, before
    proj_out). Returns how many were dropped."""
    dropped = 0
    for node in graph.findAllNodes("aten::contiguous"):
        uses = node.output().uses()
        if uses and all(use.user.kind() == "aten::_convolution" and use.offset == 0 for use in uses):
            node.output().replaceAllUsesWith(node.inputsAt(0))
            node.destroy()
            dropped += 1
    return dropped


def _constant(value: torch._C.Value):
    """A graph value's constant, or None where it is computed."""
    return value.toIValue() if value.node().kind() == "prim::Constant" else None


def _convolutions_as_calls(graph: torch._C.Graph, kernels, off: frozenset = frozenset()) -> int:
    """Rewrite a frozen graph's plain convolutions (stride 1, groups 1, constant float32 weights) into the loops'
    calls: 1x1 ones into one matrix product each (`pointwise_conv`), 3x3 ones of padding 1 between multiples of 16
    channels into the Winograd loop (engine/cpu/winograd.c) where it was built, their kernels transformed once, here.
    `off` may name "pointwise" or "winograd" to leave those to torch. Returns how many."""
    winograd = kernels.has_winograd and "winograd" not in off
    rewritten = 0
    for node in graph.findAllNodes("aten::_convolution"):
        weight, bias = _constant(node.inputsAt(1)), _constant(node.inputsAt(2))
        stride, padding, dilation, transposed, _, groups = (_constant(node.inputsAt(i)) for i in range(3, 9))
        plain = (stride == [1, 1] and dilation == [1, 1] and transposed is False and groups == 1
                 and isinstance(weight, torch.Tensor) and weight.dtype == torch.float32 and weight.ndim == 4
                 and (bias is None or isinstance(bias, torch.Tensor)))
        if plain and weight.shape[2:] == (1, 1) and padding == [0, 0] and "pointwise" not in off:
            op, constants = "pointwise_conv", (weight.reshape(weight.shape[:2]).t().contiguous(),)  # (C, O)
        elif plain and winograd and winograd_serves(weight.shape, stride, padding, dilation, groups):
            op, constants = "winograd_conv", winograd_weights(weight)
        else:
            continue
        with graph.insert_point_guard(node):
            values = [graph.insertConstant(constant) for constant in constants]
            inputs = [node.inputsAt(0), *values, node.inputsAt(2)]
            call = graph.create(f"{kernels.namespace}::{op}", inputs, 1)
            graph.insertNode(call)
        call.output().setType(node.output().type())
        node.output().replaceAllUsesWith(call.output())
        node.destroy()
        rewritten += 1
    return rewritten


class GraphForward:
    """Installed as a UNet's `forward`: the frozen graph for a plain call, diffusers' forward for every other. The
    module's hooks still run around it (they run in `Module.__call__`)."""

    def __init__(self, unet: torch.nn.Module, kernels=None, off: frozenset = frozenset()):
        self.unet = unet
        self.kernels = kernels  # engine/cpu/kernels.py's CpuKernels: channels-last graphs with the norm loop
        self.off = off  # rewrites left out (engine/cpu/__init__.py, LAB_CPU_OFF): "winograd", "pointwise"
        self._graphs: OrderedDict[tuple, torch.jit.ScriptModule | None] = OrderedDict()
        self._lock = threading.Lock()
        # The attention layers, found on the first call: a deep copy installs its GraphForward before its modules.
        self._attention: list | None = None

    @property
    def eager(self):
        """diffusers' own forward of this UNet."""
        return type(self.unet).forward.__get__(self.unet)

    @property
    def __signature__(self) -> inspect.Signature:  # pipelines inspect the UNet's forward
        return inspect.signature(self.eager)

    def __deepcopy__(self, memo) -> GraphForward:
        # a copied UNet traces its own graphs, for its own processors
        return GraphForward(memo[id(self.unet)], self.kernels, self.off)

    @property
    def graphs(self) -> int:
        """How many signatures have a graph."""
        return sum(g is not None for g in self._graphs.values())

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        key = None if args else self._signature(sample, timestep, encoder_hidden_states, kwargs)
        if key is None:
            return self.eager(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        graph = self._graph(key, sample, timestep, encoder_hidden_states, kwargs)
        if graph is not None:
            try:
                out = graph(sample, timestep, encoder_hidden_states)
                return UNet2DConditionOutput(sample=out) if return_dict else (out,)
            except Exception as exc:  # a graph this build of torch cannot run: that signature goes back to Python
                log.warning("The UNet's graph failed (%s); it runs its Python forward for these inputs.", exc)
                with self._lock:
                    self._graphs[key] = None
        return self.eager(sample, timestep, encoder_hidden_states, return_dict=return_dict, **kwargs)

    def _signature(self, sample, timestep, encoder_hidden_states, kwargs: dict) -> tuple | None:
        """The graph key of this call, or None where it must run diffusers' forward."""
        perturb = _row_marks(kwargs)
        tensors = (sample, timestep, encoder_hidden_states)
        if perturb is False or not all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors):
            return None
        if (sample.dtype != torch.float32 or encoder_hidden_states.dtype != torch.float32 or sample.ndim != 4
                or timestep.ndim != 0 or encoder_hidden_states.ndim != 3 or torch.is_grad_enabled()
                or self.unet.training or is_plain() or torch.jit.is_tracing()):
            return None
        processors = self._processor_keys()
        if processors is None:
            return None
        return (tuple(sample.shape), timestep.dtype, tuple(encoder_hidden_states.shape), processors,
                None if perturb is None else tuple(perturb.tolist()))

    def _processor_keys(self) -> tuple | None:
        """What every attention layer's processor does, or None when one cannot say (a recorder of attention maps,
        a processor from elsewhere)."""
        if self._attention is None:
            self._attention = [m for m in self.unet.modules() if isinstance(m, Attention)]
        keys = []
        for module in self._attention:
            computation_key = getattr(module.processor, "computation_key", None)
            key = computation_key() if computation_key is not None else None
            if key is None:
                return None
            keys.append(key)
        return tuple(keys)

    def _graph(self, key: tuple, sample, timestep, encoder_hidden_states, kwargs) -> torch.jit.ScriptModule | None:
        with self._lock:
            if key in self._graphs:
                return self._graphs[key]
            bigger = sum(k[0][0] > ONE_IMAGE for k in self._graphs)
            if sample.shape[0] > ONE_IMAGE and bigger >= MAX_GRAPHS:
                return None  # diffusers' forward: a new trace would stay in memory for good
            graph = self._trace(sample, timestep, encoder_hidden_states, _row_marks(kwargs))
            self._graphs[key] = graph
            return graph

    def _trace(self, sample, timestep, encoder_hidden_states, perturb=None) -> torch.jit.ScriptModule | None:
        try:
            with warnings.catch_warnings():  # the tracer's notes on values it keeps constant: the key holds them
                warnings.simplefilter("ignore")
                marks = None if perturb is None else perturb.clone()
                inputs = (sample, timestep, encoder_hidden_states)
                if self.kernels is not None and self.kernels.available:
                    frozen = self._channels_last(marks, inputs)
                    if frozen is not None:
                        return frozen
                return torch.jit.freeze(torch.jit.trace(_Plain(self.unet, marks).eval(), inputs, check_trace=False))
        except Exception as exc:  # TorchScript cannot take this model: it keeps diffusers' forward
            log.warning("The UNet keeps its Python forward: tracing it failed (%s).", exc)
            return None

    def _channels_last(self, marks, inputs) -> torch.jit.ScriptModule | None:
        """The graph with channels-last activations and weights (the weights as copies, held by the graph alone:
        the module keeps its own layout) and its group norms as the C loop; None where a norm cannot be one."""
        weights = [(m, m.weight) for m in self.unet.modules() if isinstance(m, torch.nn.Conv2d)]
        try:
            for module, weight in weights:
                module.weight = torch.nn.Parameter(weight.contiguous(memory_format=torch.channels_last), False)
            traced = torch.jit.trace(_Plain(self.unet, marks, True).eval(), inputs, check_trace=False)
            frozen = torch.jit.freeze(traced)
        finally:
            for module, weight in weights:
                module.weight = weight
        if not _norms_as_loops(frozen.graph, self.kernels.namespace):
            return None
        _drop_layout_copies(frozen.graph)
        _convolutions_as_calls(frozen.graph, self.kernels, self.off)
        return frozen


def _row_marks(kwargs: dict) -> torch.Tensor | None | bool:
    """PAG's and SEG's perturbed rows from a call's other arguments: the (B,) boolean tensor, None when the call has
    no other argument, False when it has one a graph cannot take."""
    others = {name: value for name, value in kwargs.items() if value is not None}
    if not others:
        return None
    extra = others.get("cross_attention_kwargs")
    if set(others) != {"cross_attention_kwargs"} or not isinstance(extra, dict) or set(extra) != {"perturb"}:
        return False
    marks = extra["perturb"]
    if not isinstance(marks, torch.Tensor) or marks.dtype != torch.bool or marks.ndim != 1:
        return False
    return marks


def use_graphs(unet: torch.nn.Module, kernels=None, off: frozenset = frozenset()) -> GraphForward | None:
    """Give a CPU float32 UNet below MAX_PARAMETERS the graph forward and return it; None where it got none. With
    `kernels` whose norm loop exists, its graphs run channels-last with their group norms as that loop."""
    small = sum(p.numel() for p in unet.parameters()) <= MAX_PARAMETERS
    if not small or unet.device.type != "cpu" or unet.dtype != torch.float32:
        return None
    unet.forward = GraphForward(unet, kernels, off)
    return unet.forward
