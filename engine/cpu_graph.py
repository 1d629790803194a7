"""Small UNets on the CPU run their plain calls as frozen TorchScript graphs: the same ops, without Python between.

The lab's UNet has 1.8M parameters and runs about 800 ops per forward, most of them on tensors of a few hundred
kilobytes, so the Python between the ops (diffusers' modules, the attention processors) is a fifth of a forward,
and while one batch-split worker runs Python the other waits for the GIL. `torch.jit.trace` records one forward's
ops and `torch.jit.freeze` folds the weights in as constants, so that the graph runs in C++ without the GIL and
with its convolutions' weights packed once (`python -m engine bench --grid`: README has the before and after).

A graph is traced per input signature (shapes and the timestep's dtype), on first use, under a lock, at most
MAX_GRAPHS per model, least recently used forgotten first. Only the plain call is a graph: float32 on the CPU, no
autograd, the attention processors the UNet was loaded with (engine/cpu_attention.py), and no argument beyond the
sample, the timestep and the prompt embeddings. Anything else - ControlNet residuals, SDXL's added conditioning,
perturbed attention (engine/perturb.py), attention maps (engine/attention.py), FLOP counting - runs diffusers'
forward as it is. Models above MAX_PARAMETERS keep diffusers' forward always: their ops are long enough that
Python costs them little, and freezing would copy their weights.
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
from torch.utils._python_dispatch import _get_current_dispatch_mode

MAX_PARAMETERS = 50_000_000
MAX_GRAPHS = 8  # input signatures kept per model: batch sizes x prompt lengths x timestep dtypes in use

log = logging.getLogger(__name__)


class _Plain(torch.nn.Module):
    """The UNet's plain call as a module with tensor inputs and one tensor out: what gets traced."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        return type(self.unet).forward(self.unet, sample, timestep, encoder_hidden_states, return_dict=False)[0]


class GraphForward:
    """Installed as a UNet's `forward`: the frozen graph for a plain call, diffusers' forward for every other. The
    module's hooks still run around it (they run in `Module.__call__`)."""

    def __init__(self, unet: torch.nn.Module, processors: list | None = None):
        self.unet = unet
        self._graphs: OrderedDict[tuple, torch.jit.ScriptModule | None] = OrderedDict()
        self._lock = threading.Lock()
        # The processors a graph may bake in; None until the first call (a copy is made before its modules are).
        self._processors = processors

    @property
    def eager(self):
        """diffusers' own forward of this UNet."""
        return type(self.unet).forward.__get__(self.unet)

    @property
    def __signature__(self) -> inspect.Signature:  # pipelines inspect the UNet's forward
        return inspect.signature(self.eager)

    def __deepcopy__(self, memo) -> GraphForward:
        return GraphForward(memo[id(self.unet)])  # a copied UNet traces its own graphs, for its own processors

    @property
    def graphs(self) -> int:
        """How many signatures have a graph."""
        return sum(g is not None for g in self._graphs.values())

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        if args or any(v is not None for v in kwargs.values()) or not self._plain(sample, timestep,
                                                                                   encoder_hidden_states):
            return self.eager(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        graph = self._graph(sample, timestep, encoder_hidden_states)
        if graph is None:
            return self.eager(sample, timestep, encoder_hidden_states, return_dict=return_dict)
        try:
            out = graph(sample, timestep, encoder_hidden_states)
        except Exception as exc:  # a graph this build of torch cannot run: that signature goes back to Python
            log.warning("The UNet's graph failed (%s); it runs its Python forward for these inputs.", exc)
            with self._lock:
                self._graphs[_key(sample, timestep, encoder_hidden_states)] = None
            return self.eager(sample, timestep, encoder_hidden_states, return_dict=return_dict)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    def _plain(self, sample, timestep, encoder_hidden_states) -> bool:
        tensors = (sample, timestep, encoder_hidden_states)
        return (all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors)
                and sample.dtype == torch.float32 and encoder_hidden_states.dtype == torch.float32
                and sample.ndim == 4 and timestep.ndim == 0 and encoder_hidden_states.ndim == 3
                and not torch.is_grad_enabled() and not self.unet.training
                and _get_current_dispatch_mode() is None and not torch.jit.is_tracing()
                and all(m.processor is p for m, p in self._attention_processors()))

    def _attention_processors(self) -> list:
        if self._processors is None:
            self._processors = [(m, m.processor) for m in self.unet.modules() if isinstance(m, Attention)]
        return self._processors

    def _graph(self, sample, timestep, encoder_hidden_states) -> torch.jit.ScriptModule | None:
        key = _key(sample, timestep, encoder_hidden_states)
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key]
            graph = self._trace(sample, timestep, encoder_hidden_states)
            self._graphs[key] = graph
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
            return graph

    def _trace(self, sample, timestep, encoder_hidden_states) -> torch.jit.ScriptModule | None:
        try:
            with warnings.catch_warnings():  # the tracer's notes on shapes it keeps constant: the key holds them
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(_Plain(self.unet).eval(), (sample, timestep, encoder_hidden_states),
                                         check_trace=False)
                return torch.jit.freeze(traced)
        except Exception as exc:  # TorchScript cannot take this model: it keeps diffusers' forward
            log.warning("The UNet keeps its Python forward: tracing it failed (%s).", exc)
            return None


def _key(sample, timestep, encoder_hidden_states) -> tuple:
    """What a graph is specialised to: every shape, and the timestep's dtype."""
    return tuple(sample.shape), timestep.dtype, tuple(encoder_hidden_states.shape)


def use_graphs(unet: torch.nn.Module) -> bool:
    """Give a CPU float32 UNet below MAX_PARAMETERS the graph forward; True where it got it. Call it after the
    attention processors are set: changing them later sends every call to diffusers' forward."""
    small = sum(p.numel() for p in unet.parameters()) <= MAX_PARAMETERS
    if not small or unet.device.type != "cpu" or unet.dtype != torch.float32:
        return False
    unet.forward = GraphForward(unet, [(m, m.processor) for m in unet.modules() if isinstance(m, Attention)])
    return True
