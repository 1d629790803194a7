"""What a request costs here: its model evaluations, priced from a calibration of each model on this machine.

A request's work is counted, not timed (engine/request.py, step_passes): per denoising step, the samples the main
denoiser takes (images x the guider's branches in its batch), each ControlNet's encoder pass, the weak model's call
(AutoGuidance) and the classifier's forward and backward pass (classifier guidance). Each is priced by a curve of
seconds against samples, measured once per machine and model: short timed runs of the model at one and eight
images on the engine's model thread (a second or two for a project model, most of it tracing what its first run
would trace anyway), kept in `calibration.json` in the user's cache folder (GUIDANCE_LAB_CACHE moves it), keyed by
the machine, the engine's code and the model's files. A step costs its fixed overhead (scheduler, guidance math,
Python) plus a per-sample cost that depends on the batch: linear between the measured batch sizes, so a one-image
step and a sixteen-image one each cost what they do; a sample larger than the model's native size costs its share
of pixels more. A request's encoding and decoding are priced the same way against its images. A calibration taken
while other processes kept the CPU busy is used but not stored, and is measured again five minutes later, keeping
the faster of the two; meanwhile runs faster than their work bring the estimates down (the slowdown below).

A model neither measured nor measurable here (a hub model on a CPU host: minutes to fetch, load and time) never
gets another model's rate: it is priced by its parameter count against a measured one, which on a CPU refuses it,
or refused in one sentence where its size is unknown.

The estimate is that work times the present slowdown: how much longer than their work this model's recent runs
took (other processes on the machine; `python -m benchmarks.budget --contend 2`), apart for the steps and for the
encoding and decoding, which a busy machine slows differently; forgotten after a minute, so that a busy spell or
one slow run never outlasts itself. A request no bigger than the default request of its tab is always admitted
(`Estimate.default_s`). A run admitted under a budget stops between steps at twice the budget and keeps the images
of its last x0 estimate (`RunLimit`).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import EngineError
from .guiders import GuidanceSettings
from .models.loading import weights_on_disk
from .models.registry import ModelSpec, default_model, recommended_scheduler
from .request import ControlSpec, Request, step_passes

VERSION = 1  # of the calibration: a new one measures again
PROBE_STEPS = 4  # steps of a timed calibration run; the fastest after its first is its per-step cost
PROBE_IMAGES = (1, 8)  # the two batch sizes measured (with CFG, 2 and 16 samples through the denoiser)
PROBE_PROMPT = "a red circle"
CALIBRATE_PARAMETERS = 50_000_000  # on a CPU only models up to this many parameters are timed (seconds, not minutes)
DEFAULT_STEPS = 25  # the tabs' default request: one image, 25 steps, CFG (engine/request.py's Request)
DEFAULT_SCALE = 5.0
SLOWDOWN_WINDOW_S = 60.0  # a run says how busy the machine is for this long
SLOWDOWN_RUNS = 3  # the median of the last runs within the window (one run alone: itself)
SLOWDOWN_RANGE = (0.1, 100.0)  # below 1 only where the calibration ran on a busy machine (noise only slows)
OVERRUN = 2.0  # an admitted run stops between steps at this many times its budget
MAX_ENTRIES = 256  # calibrations kept in the cache file, the most recent
MAX_SHAPES = 4096  # run shapes remembered (a shape's first run is not taken as the machine's slowdown)
BUSY_CORES = 0.5  # a calibration while other processes kept more cores than this busy is provisional:
PROVISIONAL_S = 300.0  # it is not stored, and it is measured again this long after
# Denoiser (or ControlNet) parameters of the registry's hub models, to price them where they are not measured.
HUB_PARAMETERS = {"sd15": 860_000_000, "sdxl": 2_567_000_000, "sd35-medium": 2_470_000_000,
                  "dit-xl-2-256": 675_000_000, "controlnet-canny": 361_000_000, "controlnet-scribble": 361_000_000,
                  "controlnet-pose": 361_000_000, "controlnet-sdxl-canny": 1_251_000_000}
MIN_SLOPE_SHARE = 0.5  # past the largest measured batch a sample costs at least this share of the average there


def units(steps: int, evals_per_step: int, overhead: int = 3) -> int:
    """A rough count of a run's work for comparing guidance methods (engine/bench.py): per step, its evaluations
    plus about three evaluations' worth of fixed overhead."""
    return steps * (evals_per_step + overhead)


def curve(points: Iterable[tuple[float, float]], x: float) -> float:
    """Seconds at `x` samples on a curve through measured (samples, seconds) points: linear between them (made
    non-decreasing), along the first segment below them and the last beyond, never less per sample beyond the last
    point than MIN_SLOPE_SHARE of its average."""
    pts = sorted((float(a), float(b)) for a, b in points)
    if not pts or x <= 0:
        return 0.0
    for k in range(1, len(pts)):
        pts[k] = (pts[k][0], max(pts[k][1], pts[k - 1][1]))
    if len(pts) == 1:
        (x0, y0), = pts
        return y0 * x / x0
    segment = next((k for k in range(1, len(pts)) if x <= pts[k][0]), len(pts) - 1)
    (x0, y0), (x1, y1) = pts[segment - 1], pts[segment]
    slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
    if x > x1:
        return y1 + max(slope, MIN_SLOPE_SHARE * y1 / x1) * (x - x1)
    return max(y0 + slope * (x - x0), y0 * x / x0 if x < x0 else 0.0)


@dataclass
class Prices:
    """One model's costs here: per role, (samples, seconds) points at `pixels` image pixels a sample.

    Roles: `step` (a denoising step: overhead and the main denoiser, against its samples), `fixed` (a request's
    encoding and decoding, against its images), `control` (the first ControlNet's pass, with the denoiser then taking
    its residuals), `control_more` (each further one), `weak` (AutoGuidance's weak model) and `classifier` (a
    forward and backward pass), each against the samples it takes. Prices not measured on this model are another
    model's, each sample counted `scale` times (the ratio of their parameters)."""

    roles: dict[str, list[tuple[float, float]]]
    pixels: int
    parameters: int
    scale: float = 1.0
    measured: bool = True
    expires: float | None = None  # time.monotonic() after which a provisional calibration is measured again

    def cost(self, role: str, samples: float, pixels: float) -> float:
        points = self.roles.get(role)
        return curve(points, samples * self.scale * pixels / self.pixels) if points and samples else 0.0


NOTHING = Prices({}, 1, 0)  # what a request that does not use a network pays for it


class Estimate(float):
    """Seconds a request should take here now: `work_s`, its seconds on this machine when idle, times `slowdown`,
    how much longer runs take at present; `default_s`, the same for the default request of its tab on its model
    (None where that model was not measured here), which the budget always admits."""

    def __new__(cls, work_s: float, slowdown: float = 1.0, default_s: float | None = None):
        self = super().__new__(cls, work_s * slowdown)
        self.work_s, self.slowdown, self.default_s = work_s, slowdown, default_s
        return self


def total(estimates: Iterable[float], default_s: float | None = None) -> Estimate:
    """The estimate of several runs of one request (a Compare grid's rows), with `default_s` as its floor."""
    values = list(estimates)
    work = sum(getattr(e, "work_s", e) for e in values)
    seconds = sum(float(e) for e in values)
    return Estimate(work, seconds / work if work > 0 else 1.0, default_s)


def default_request(req: Request) -> Request:
    """The default request of the tab `req` comes from, on its model: one image of DEFAULT_STEPS steps with CFG at
    its native size, with its first control (the ControlNet tab's one) and its classifier (the class tab's)."""
    return replace(req, num_images=1, image_seeds=None, steps=DEFAULT_STEPS, guess_mode=False, height=None,
                   width=None, guidance=GuidanceSettings("cfg", DEFAULT_SCALE), controls=req.controls[:1])


@dataclass
class RunLimit:
    """The wall-clock bound of an admitted request: its runs stop between steps once OVERRUN times its budget has
    passed since it started (`deadline`, time.monotonic), keeping what they have; each stop leaves its steps."""

    budget_s: float
    deadline: float | None = None
    stops: list[tuple[int, int]] = field(default_factory=list)  # (steps run, steps asked) of each stopped run

    def start(self) -> "RunLimit":
        self.deadline = time.monotonic() + OVERRUN * self.budget_s
        return self

    def passed(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def stopped(self, done: int, steps: int) -> str:
        """Record a run stopped after `done` of `steps` steps; its sentence."""
        self.stops.append((done, steps))
        return (f"Stopped after {done} of {steps} steps, at twice the {self.budget_s:.3g} s work budget; the "
                f"images are the run's estimate at that step.")

    def note(self) -> str | None:
        """One sentence for the request's stopped runs, or None."""
        if not self.stops:
            return None
        if len(self.stops) == 1:
            done, steps = self.stops[0]
            return (f"The run was stopped after {done} of {steps} steps, at twice the {self.budget_s:.3g} s work "
                    f"budget; the images are its estimate at that step.")
        return (f"{len(self.stops)} runs were stopped at twice the {self.budget_s:.3g} s work budget; their images "
                f"are each run's estimate at the step it reached.")


_LIMIT: contextvars.ContextVar[RunLimit | None] = contextvars.ContextVar("run_limit", default=None)


def admit(budget_s: float) -> RunLimit:
    """Mark the request being handled in this context as admitted under `budget_s` seconds of work."""
    limit = RunLimit(budget_s)
    _LIMIT.set(limit)
    return limit


def run_context() -> tuple[contextvars.Context, RunLimit | None]:
    """A copy of this context for the thread that runs the admitted request, where its limit has started (the runs
    the engine starts from there stop at its deadline), and that limit; here the limit is taken, so that nothing
    after this request inherits it."""
    limit = _LIMIT.get()
    _LIMIT.set(None)
    context = contextvars.copy_context()
    if limit is not None:
        context.run(_LIMIT.set, limit.start())
    return context, limit


def current_limit() -> RunLimit | None:
    """The started limit of the request this thread runs, or None (the CLI, the tests, the evaluation)."""
    limit = _LIMIT.get()
    return limit if limit is not None and limit.deadline is not None else None


def machine_identity(device: torch.device) -> str:
    """What the prices depend on besides the model: the device (CPU model and cores, or GPU), torch, the engine's
    code and the CPU path's switches."""
    parts = [device.type, torch.__version__, _engine_code()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    else:
        from .cpu.kernels import cpu_identity
        from .cpu.threads import available_cores

        parts += [cpu_identity(), str(available_cores())]
    parts += [f"{name}={os.environ.get(name, '')}" for name in ("LAB_CPU_LOOPS", "LAB_CPU_OFF", "OMP_NUM_THREADS")]
    return "\n".join(parts)


_CODE: list[str] = []


def _engine_code() -> str:
    """A hash of the engine's sources: changed code is measured again."""
    if not _CODE:
        digest = hashlib.sha1()
        root = Path(__file__).resolve().parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".c", ".cpp", ".h") and p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
        _CODE.append(digest.hexdigest())
    return _CODE[0]


@functools.lru_cache(maxsize=256)
def fingerprint(spec: ModelSpec) -> str:
    """What a model's speed depends on: a local folder's configs and the sizes of its weights (so the same network
    in another folder, or the three lab ControlNets, which differ only in their weights, are measured once), a hub
    model's id."""
    if not spec.is_local:
        return f"hub:{spec.source}:{spec.kind}"
    digest = hashlib.sha1(spec.kind.encode())
    folder = Path(spec.source)
    try:
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".safetensors", ".bin", ".json") and path.is_file():
                digest.update(f"{path.relative_to(folder).as_posix()}:{path.stat().st_size}".encode())
                if path.suffix == ".json" and path.stat().st_size < 1_000_000:
                    digest.update(path.read_bytes())
    except OSError:
        return f"folder:{spec.source}:{spec.kind}"
    return digest.hexdigest()


def cache_path() -> Path:
    from .cpu.kernels import cache_folder

    return cache_folder().parent / "calibration.json"


class Meter:
    """The prices of the models used here (measured, read from the calibration file, or scaled from another's by
    parameters) and the recent slowdown of runs; `estimate` prices a request."""

    def __init__(self, cache: Path | None = None):
        """cache: the calibration file (None: `cache_path()`, in the user's cache folder)."""
        self.cache = cache
        self._prices: dict[str, Prices] = {}
        self._slowdowns: dict[str, deque[tuple[float, float, float]]] = {}
        self._shapes: set[tuple] = set()  # the shapes of the runs seen: a shape's first run is not observed
        self._expired: dict[str, Prices] = {}  # provisional calibrations due to be measured again
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._machine: str | None = None

    # Estimating.
    def estimate(self, engine, req: Request) -> Estimate:
        """The request's estimate, measuring first what it uses that was never measured here; an EngineError where a
        model it uses cannot be priced."""
        spec = engine.model_spec(req)
        prices = self._main(engine, req, spec, measure=True)
        slowdown = self.slowdown(_path(spec, req))
        fixed, steps = self._work(engine, req, spec, prices, measure=True)
        default = None
        if prices.measured:
            floor = self._work(engine, default_request(req), spec, prices, measure=True)
            default = floor[0] * slowdown[0] + floor[1] * slowdown[1]
        work = fixed + steps
        seconds = fixed * slowdown[0] + steps * slowdown[1]
        return Estimate(work, seconds / work if work > 0 else 1.0, default)

    def work(self, engine, req: Request) -> tuple[float, float] | None:
        """The request's seconds of work here, (outside its steps, in them), from the prices already known,
        measuring nothing; None where one is missing."""
        try:
            spec = engine.model_spec(req)
            prices = self._main(engine, req, spec, measure=False)
            return None if prices is None else self._work(engine, req, spec, prices, measure=False)
        except EngineError:
            return None

    def _work(self, engine, req: Request, spec: ModelSpec, prices: Prices, measure: bool
              ) -> tuple[float, float] | None:
        counts = step_passes(req)
        nets = [self._control(engine, req, spec, c, measure) for c in req.controls]
        classifier = self._classifier(engine, req, spec, measure) if any(p.classifier for p in counts) else NOTHING
        weak = self._weak(engine, req, spec, measure) if spec.weak and any(p.weak for p in counts) else NOTHING
        if any(p is None for p in (*nets, classifier, weak)):
            return None  # not measured yet, and not to be measured now
        pixels = _pixels(engine, req, spec)
        seconds = 0.0
        for passes, steps in counts.items():
            step = prices.cost("step", passes.denoiser, pixels)
            active = [(net, samples) for net, samples in zip(nets, passes.controls) if samples]
            step += sum(net.cost("control_more" if k else "control", samples, pixels)
                        for k, (net, samples) in enumerate(active))
            step += weak.cost("weak", passes.weak, pixels) + classifier.cost("classifier", passes.classifier, pixels)
            seconds += steps * step
        return prices.cost("fixed", req.num_images, pixels), seconds

    def _main(self, engine, req: Request, spec: ModelSpec, measure: bool) -> Prices | None:
        probe = _probe(engine, req, spec)
        return self._prices_of(engine, "model", spec, (), lambda: _measure_model(engine, probe, spec), measure,
                               "step")

    def _control(self, engine, req: Request, base: ModelSpec, control: ControlSpec, measure: bool) -> Prices | None:
        name = control.controlnet or default_model("controlnet", control.control_type)
        net = engine.resolve(name, "controlnet")
        main = self._main(engine, req, base, measure)
        probe = _probe(engine, req, base)
        return self._prices_of(engine, "control", net, (base,),
                               lambda: _measure_control(engine, probe, main, name, control.control_type), measure,
                               "control")

    def _classifier(self, engine, req: Request, base: ModelSpec, measure: bool) -> Prices | None:
        name = req.classifier or default_model("classifier")
        net = engine.resolve(name, "classifier")
        main = self._main(engine, req, base, measure)
        probe = _probe(engine, req, base)
        return self._prices_of(engine, "classifier", net, (base,),
                               lambda: _measure_classifier(engine, probe, main, name), measure, "classifier")

    def _weak(self, engine, req: Request, base: ModelSpec, measure: bool) -> Prices | None:
        weak = engine.resolve(base.weak, "unet")
        probe = _probe(engine, req, base)
        return self._prices_of(engine, "weak", weak, (base,), lambda: _measure_weak(engine, probe, weak), measure,
                               "weak")

    def _prices_of(self, engine, subject: str, spec: ModelSpec, context: tuple[ModelSpec, ...], measure_fn,
                   measure: bool, role: str) -> Prices | None:
        """The prices of `spec` in its role: known (in memory or the calibration file), else, where `measure`,
        measured (where it can be here, on the model thread) or scaled from a measured model's; else None."""
        key = self._key(engine, subject, spec, context)
        known = self._known(key)
        if known is not None or not measure:
            return known
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one measurement of a model at a time; the others wait for it
            known = self._known(key)
            if known is None and _measurable(engine, spec):
                before = cpu_ticks()
                with self._guard:
                    earlier = self._expired.pop(key, None)
                known = _faster(engine.runner.call(measure_fn), earlier)
                if other_cores(before, cpu_ticks()) > BUSY_CORES:  # timed on a busy machine: used for now, not kept
                    known = replace(known, expires=time.monotonic() + PROVISIONAL_S)
                else:
                    self._write(key, known)
            if known is None:
                known = self._scaled(engine, spec, role)
            with self._guard:
                self._prices[key] = known
        return known

    def _known(self, key: str) -> Prices | None:
        with self._guard:
            known = self._prices.get(key)
            if known is not None and known.expires is not None and time.monotonic() > known.expires:
                self._expired[key] = self._prices.pop(key)  # measured again, the faster of the two kept
                known = None
        if known is None:
            known = self._read(key)
            if known is not None:
                with self._guard:
                    known = self._prices.setdefault(key, known)
        return known

    def _scaled(self, engine, spec: ModelSpec, role: str) -> Prices:
        """Prices of a model that cannot be measured here: the largest measured model's of the same role (the
        project's default model of its kind, measured now where none is), each sample counted as many times as the
        parameters are more (its pixels count in `_pixels`)."""
        parameters = _parameters(engine, spec)
        measured = self._measured(role)
        if not measured and role == "step" and parameters is not None:
            kind = "class" if spec.kind == "class" else "text"
            default = engine.resolve(default_model(kind), kind)
            if default.is_local and _measurable(engine, default):
                task = dict(class_label=0) if kind == "class" else dict(prompt=PROBE_PROMPT)
                self._main(engine, Request(model=default.name, **task), default, measure=True)
                measured = self._measured(role)
        if parameters is None or not measured:
            why = "its size is unknown" if parameters is None else "no model of its kind was measured here"
            raise EngineError(f"The model '{_shown(spec.name)}' cannot be timed on this machine and {why}, so its "
                              f"work cannot be priced; pick a model this app offers.")
        reference = max(measured, key=lambda p: p.parameters)
        return Prices(reference.roles, reference.pixels, parameters, parameters / max(1, reference.parameters),
                      measured=False)

    def _measured(self, role: str) -> list[Prices]:
        with self._guard:
            return [p for p in self._prices.values() if p.measured and role in p.roles]

    def _key(self, engine, subject: str, spec: ModelSpec, context: tuple[ModelSpec, ...]) -> str:
        if self._machine is None:
            self._machine = machine_identity(engine.device)
        text = "\n".join([str(VERSION), self._machine, subject, fingerprint(spec), *map(fingerprint, context)])
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def inflate(self, factor: float) -> None:
        """Multiply every known price by `factor`, as a calibration on a busy machine would have them (for the tests
        and benchmarks of what the budget does then); the calibration file is left as it is."""
        with self._guard:
            for key, prices in self._prices.items():
                roles = {role: [(x, y * factor) for x, y in points] for role, points in prices.roles.items()}
                self._prices[key] = replace(prices, roles=roles)

    # The slowdown.
    def observe(self, engine, req: Request, outside_s: float, steps_s: float) -> None:
        """A run of `req` took `outside_s` outside its steps (encoding, decoding) and `steps_s` in them (the page's
        callbacks left out): how much longer than their work, for the estimates of the next minute. The two are
        kept apart: the steps of a small model run on one thread, its encoders and decoder on torch's own team,
        which a busy machine slows far more. The first run of a shape says nothing of the machine: it loads and
        traces what it needs."""
        spec = engine.model_spec(req)
        shape = (fingerprint(spec), tuple(step_passes(req).items()), req.height, req.width, req.scheduler,
                 tuple(c.controlnet or c.control_type for c in req.controls), req.classifier)
        with self._guard:
            first = shape not in self._shapes
            if len(self._shapes) >= MAX_SHAPES:  # strangers' requests take any shape: the set stays small
                self._shapes.clear()
            self._shapes.add(shape)
        work = None if first else self.work(engine, req)
        if work is None or min(work) <= 0:
            return
        low, high = SLOWDOWN_RANGE
        ratios = tuple(min(max(seconds / part, low), high) for seconds, part in zip((outside_s, steps_s), work))
        now = time.monotonic()
        with self._guard:
            for path in (_path(spec, req), ""):
                self._slowdowns.setdefault(path, deque(maxlen=SLOWDOWN_RUNS)).append((now, *ratios))

    def slowdown(self, path: str) -> tuple[float, float]:
        """How much longer than their work runs like this take now, (outside the steps, in them): the median of
        the recent runs of the same model and networks (of any, where there were none), 1 where no run is recent."""
        now = time.monotonic()
        with self._guard:
            for key in (path, ""):
                recent = [ratios for t, *ratios in self._slowdowns.get(key, ()) if now - t < SLOWDOWN_WINDOW_S]
                if recent:
                    return statistics.median(r[0] for r in recent), statistics.median(r[1] for r in recent)
        return 1.0, 1.0

    # The calibration file.
    def _file(self) -> Path:
        return self.cache or cache_path()

    def _read(self, key: str) -> Prices | None:
        entry = _load(self._file()).get(key)
        try:
            roles = {role: [(float(x), float(y)) for x, y in points] for role, points in entry["roles"].items()}
            return Prices(roles, int(entry["pixels"]), int(entry["parameters"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def _write(self, key: str, prices: Prices) -> None:
        """Add the prices to the calibration file, written whole and replaced at once (kept in memory alone where
        it cannot be written)."""
        path = self._file()
        with self._guard:
            entries = _load(path)
            entries[key] = {"roles": prices.roles, "pixels": prices.pixels, "parameters": prices.parameters,
                            "measured_at": time.time()}
            newest = sorted(entries, key=lambda k: _measured_at(entries[k]))[-MAX_ENTRIES:]
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
                    json.dump({"version": VERSION, "entries": {k: entries[k] for k in newest}}, handle)
                os.replace(handle.name, path)
            except OSError:
                pass


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == VERSION else None
    return entries if isinstance(entries, dict) else {}


def cpu_ticks() -> tuple[float, int, int] | None:
    """(now, clock ticks the machine's CPUs were busy, ticks this process was) from /proc; None without it."""
    try:
        busy = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return time.monotonic(), sum(busy) - busy[3] - busy[4], int(own[11]) + int(own[12])  # less idle, iowait
    except (OSError, ValueError, IndexError):
        return None


def other_cores(before, after) -> float:
    """How many cores other processes kept busy on average between two `cpu_ticks()` (0 where unknown)."""
    if before is None or after is None or after[0] <= before[0]:
        return 0.0
    ticks = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, ticks / os.sysconf("SC_CLK_TCK") / (after[0] - before[0]))


def _faster(prices: Prices, earlier: Prices | None) -> Prices:
    """A new calibration with each of its points no slower than an earlier one's at the same samples (a busy
    machine only ever slows a measurement)."""
    if earlier is None:
        return prices
    roles = {}
    for role, points in prices.roles.items():
        before = dict(earlier.roles.get(role, ()))
        roles[role] = [(x, min(y, before.get(x, y))) for x, y in points]
    return replace(prices, roles=roles)


def _measured_at(entry) -> float:
    return entry.get("measured_at", 0.0) if isinstance(entry, dict) else 0.0


def _path(spec: ModelSpec, req: Request) -> str:
    """Runs whose slowdowns are alike: the same model with the same kinds of networks (a classifier's backward
    pass, ControlNets and a weak model each suffer a busy machine differently)."""
    branch = req.guidance.branch
    uses = (bool(req.classifier or req.guidance.classifier_scale), bool(req.controls),
            branch is not None and branch.weak_model)
    return f"{spec.source}|{spec.kind}|{uses}"


# Measuring: short runs of the model at PROBE_IMAGES images, each after a one-step run (loading, tracing).
def _probe(engine, req: Request, spec: ModelSpec) -> Request:
    """The request a model is timed with: its task's, CFG at DEFAULT_SCALE, PROBE_STEPS steps, its scheduler."""
    task = dict(class_label=0) if req.task == "class" else dict(prompt=PROBE_PROMPT)
    return Request(model=req.model or spec.name, steps=PROBE_STEPS, scheduler=recommended_scheduler(spec),
                   guidance=GuidanceSettings("cfg", DEFAULT_SCALE), **task)


def _timed(engine, req: Request, runs: int = 1) -> tuple[float, float]:
    """(seconds a step, seconds outside the steps) of the request here over `runs` runs: the fastest step after a
    run's first (which loads and traces what it needs), and the least time before a run's first step and after its
    last, one step's time left out (a first run's loading and tracing: the runs after it)."""
    cuda = engine.device.type == "cuda"
    step, outside = float("inf"), float("inf")
    for _ in range(runs):
        stamps: list[float] = []

        def stamp(info: dict) -> None:
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        started = time.perf_counter()
        engine.generate(req, callback=stamp)
        ended = time.perf_counter()
        fastest = min(b - a for a, b in zip(stamps, stamps[1:]))
        step = min(step, fastest)
        outside = min(outside, max(0.0, stamps[0] - started - fastest) + (ended - stamps[-1]))
    return step, outside


def _samples(req: Request) -> int:
    """The main denoiser's samples in a step of a probe (all its steps alike)."""
    return next(iter(step_passes(req))).denoiser


def _measure_model(engine, probe: Request, spec: ModelSpec) -> Prices:
    step, fixed = [], []
    for images in PROBE_IMAGES:
        req = replace(probe, num_images=images)
        seconds, outside = _timed(engine, req, runs=3)
        step.append((_samples(req), seconds))
        fixed.append((images, outside))
    return Prices({"step": step, "fixed": fixed}, _native_pixels(engine, spec), _parameters(engine, spec) or 1)


def _extra(more: float, less: float) -> float:
    """What a network adds to a step, never measured as nothing (noise can make the difference vanish)."""
    return max(more - less, 0.05 * more)


def _measure_control(engine, probe: Request, main: Prices, name: str, control_type: str) -> Prices:
    from PIL import Image

    control = ControlSpec(Image.new("RGB", (64, 64), "white"), control_type, name)
    first, more = [], []
    for images in PROBE_IMAGES:
        req = replace(probe, num_images=images)
        samples = _samples(req)
        one, _ = _timed(engine, replace(req, controls=(control,)))
        two, _ = _timed(engine, replace(req, controls=(control, control)))
        first.append((samples, _extra(one, main.cost("step", samples, main.pixels))))
        more.append((samples, _extra(two, one)))
    spec = engine.resolve(name, "controlnet")
    return Prices({"control": first, "control_more": more}, main.pixels, _parameters(engine, spec) or 1)


def _measure_classifier(engine, probe: Request, main: Prices, name: str) -> Prices:
    points = []
    for images in PROBE_IMAGES:
        req = replace(probe, num_images=images)
        guided, _ = _timed(engine, replace(req, classifier=name))
        points.append((images, _extra(guided, main.cost("step", _samples(req), main.pixels))))
    spec = engine.resolve(name, "classifier")
    return Prices({"classifier": points}, main.pixels, _parameters(engine, spec) or 1)


def _measure_weak(engine, probe: Request, weak: ModelSpec) -> Prices:
    points = []
    for images in PROBE_IMAGES:
        req = replace(probe, num_images=images)
        alone, _ = _timed(engine, replace(req, guidance=GuidanceSettings("none", 1.0)))
        guided, _ = _timed(engine, replace(req, guidance=GuidanceSettings("autoguidance", 2.0)))
        points.append((images, _extra(guided, alone)))
    return Prices({"weak": points}, _native_pixels(engine, engine.model_spec(probe)), _parameters(engine, weak) or 1)


def _measurable(engine, spec: ModelSpec) -> bool:
    """Whether timing the model here takes seconds: any model on a GPU; on a CPU, a small one that is loaded or in
    a local folder (a hub model would be minutes to fetch, load and time)."""
    if engine.device.type == "cuda":
        return True
    if engine.store.peek(spec) is None and not spec.is_local:
        return False
    parameters = _parameters(engine, spec)
    return parameters is not None and parameters <= CALIBRATE_PARAMETERS


def _parameters(engine, spec: ModelSpec) -> int | None:
    """The parameters of the model's denoiser (or the ControlNet, classifier or UNet itself): counted where it is
    loaded, a local folder's weights (float32) where it is not, the registry's hub models from HUB_PARAMETERS."""
    obj = engine.store.peek(spec)
    if obj is not None:
        network = getattr(obj, "unet", None) or getattr(obj, "transformer", None) or obj
        if isinstance(network, torch.nn.Module):
            return sum(p.numel() for p in network.parameters())
    if spec.is_local:
        return weights_on_disk(spec) // 4 or None
    return HUB_PARAMETERS.get(spec.name)


def _native_pixels(engine, spec: ModelSpec) -> int:
    size = engine.store.native_size(spec)
    return size[0] * size[1] if size else 1


def _pixels(engine, req: Request, spec: ModelSpec) -> int:
    """Image pixels of one sample of the request: its size, or the model's native one."""
    size = engine.store.native_size(spec) or (1, 1)
    return (req.width or size[0]) * (req.height or size[1])


def _shown(name: str) -> str:
    return name if len(name) <= 40 and name.isprintable() else name[:37] + "..."
