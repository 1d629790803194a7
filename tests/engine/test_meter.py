"""The work budget's meter: evaluations counted from the guider, ControlNets, classifier and weak model; prices
from a calibration measured once and kept; a model never measured priced by its parameters or refused; the recent
slowdown; the default request's floor; and the stop at twice the budget."""

import time
from dataclasses import replace

import pytest
from PIL import Image

from engine import meter as meter_module
from engine.attention import generate_with_attention
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.meter import Estimate, Meter, RunLimit, admit, curve, current_limit, run_context, total
from engine.request import ControlSpec, Request, StepPasses, evaluations, evals_per_step, step_passes

MAP = Image.new("RGB", (32, 32), "white")


def test_curve_is_linear_between_its_points_and_never_cheaper_per_sample_beyond():
    points = [(2, 0.006), (16, 0.016)]
    assert curve(points, 2) == pytest.approx(0.006)
    assert curve(points, 9) == pytest.approx(0.011)
    assert curve(points, 1) == pytest.approx(0.006 - 0.01 / 14)  # along the first segment
    assert curve(points, 48) == pytest.approx(0.016 + 32 * 0.01 / 14)  # along the last segment beyond
    flat = [(2, 0.010), (16, 0.012)]
    assert curve(flat, 48) == pytest.approx(0.012 + 32 * 0.5 * 0.012 / 16)  # at least half the average there
    assert curve([(2, 0.01), (16, 0.008)], 16) == pytest.approx(0.01)  # a noisy point never makes more cheaper
    assert curve(points, 0) == 0.0


def test_evaluations_count_images_steps_and_branches():
    cfg = Request(prompt="a red circle", steps=25, guidance=GuidanceSettings("cfg", 5.0))
    assert evaluations(cfg) == 50 and evals_per_step(cfg) == 2
    assert evaluations(replace(cfg, num_images=8, steps=300)) == 8 * 300 * 2
    assert evaluations(replace(cfg, guidance=GuidanceSettings("cfg", 1.0))) == 25  # scale 1: c alone
    assert step_passes(replace(cfg, guidance=GuidanceSettings("pag", 5.0))) == {StepPasses(3): 25}
    # AutoGuidance: c in the main batch, its weak model a call of its own.
    assert step_passes(replace(cfg, num_images=2, guidance=GuidanceSettings("autoguidance", 2.0))) == {
        StepPasses(2, weak=2): 25}
    # A guidance interval: the unguided steps run c alone.
    interval = step_passes(replace(cfg, steps=10, guidance=GuidanceSettings("cfg", 5.0, interval=(0.2, 0.6))))
    assert interval == {StepPasses(1): 6, StepPasses(2): 4}
    # Classifier guidance: a forward and backward pass of the classifier per image and step.
    classed = Request(class_label="circle", classifier="lab-classifier", guidance=GuidanceSettings("cfg", 4.0))
    assert step_passes(classed) == {StepPasses(2, classifier=1): 25}


def test_each_stacked_controlnet_is_an_encoder_pass_within_its_range():
    controls = (ControlSpec(MAP, "scribble"), ControlSpec(MAP, "canny", end=0.5), ControlSpec(MAP, "pose", scale=0))
    req = Request(prompt="a red circle", steps=4, num_images=2, controls=controls,
                  guidance=GuidanceSettings("cfg", 5.0))
    assert step_passes(req) == {StepPasses(4, controls=(4, 4, 0)): 2, StepPasses(4, controls=(4, 0, 0)): 2}
    guess = step_passes(replace(req, guess_mode=True))  # guess mode feeds the ControlNets the conditional rows
    assert guess == {StepPasses(4, controls=(2, 2, 0)): 2, StepPasses(4, controls=(2, 0, 0)): 2}
    assert evaluations(req) == 4 * 4 + 4 * 3 * 2


@pytest.fixture
def engine(tiny_folders, tmp_path):
    engine = Engine()
    engine.model_root = tiny_folders["sd"].parent
    engine.meter = Meter(tmp_path / "calibration.json")
    return engine


def _text(steps=25, images=1, **changes):
    return Request(model="tiny-sd", prompt="a red circle", steps=steps, num_images=images,
                   guidance=GuidanceSettings("cfg", 5.0), **changes)


def test_a_calibration_is_measured_once_and_kept_for_the_next_process(engine, monkeypatch):
    monkeypatch.setattr(meter_module, "other_cores", lambda *_: 0.0)  # as on a quiet machine
    measured = []
    original = meter_module._measure_model
    monkeypatch.setattr(meter_module, "_measure_model", lambda *a: measured.append(a) or original(*a))
    one = engine.estimate_seconds(_text())
    engine.estimate_seconds(_text(images=8))
    assert len(measured) == 1  # one model, measured once for every request of it
    prices = engine.meter._known(next(iter(engine.meter._prices)))
    assert [x for x, _ in prices.roles["step"]] == [2, 16]  # CFG at one image and at eight

    later = Engine()  # the next process on this machine reads the file
    later.model_root, later.meter = engine.model_root, Meter(engine.meter.cache)
    assert later.estimate_seconds(_text()) == pytest.approx(float(one))
    assert len(measured) == 1


def test_a_calibration_on_a_busy_machine_is_not_kept_and_measured_again(engine, monkeypatch):
    monkeypatch.setattr(meter_module, "other_cores", lambda *_: 2.0)
    engine.estimate_seconds(_text())
    assert not engine.meter.cache.exists()
    ((key, busy),) = engine.meter._prices.items()
    assert busy.expires is not None
    engine.meter._prices[key] = replace(busy, expires=0.0, roles={role: [(x, 100 * y) for x, y in points]
                                                                 for role, points in busy.roles.items()})
    monkeypatch.setattr(meter_module, "other_cores", lambda *_: 0.0)
    engine.estimate_seconds(_text())  # PROVISIONAL_S later, on a quiet machine
    again = engine.meter._prices[key]
    assert again.expires is None and engine.meter.cache.exists()
    assert again.roles["step"][0][1] < 50 * busy.roles["step"][0][1]  # the quiet measurement, not the busy one


def test_work_follows_the_requests_shape(engine):
    small = engine.estimate_seconds(_text())
    assert isinstance(small, Estimate) and small.default_s == pytest.approx(float(small))  # it is the default
    many = engine.estimate_seconds(_text(images=8, steps=300))
    assert many.work_s > 12 * small.work_s  # 12 times the steps, more samples a step
    assert many.default_s == pytest.approx(float(small))  # its floor: the tab's default on the same model
    controls = (ControlSpec(MAP, "scribble", "tiny-controlnet"), ControlSpec(MAP, "scribble", "tiny-controlnet-2"))
    assert engine.estimate_seconds(_text(controls=controls)) > small
    big = engine.estimate_seconds(_text(height=256, width=256))  # 16 times the native pixels
    assert big > 4 * small


def test_a_model_never_measured_here_is_priced_by_its_parameters(engine):
    engine.estimate_seconds(_text())  # a measured model to price the others by
    sdxl = engine.estimate_seconds(Request(model="sdxl", prompt="a red circle", num_images=8, steps=300,
                                           guidance=GuidanceSettings("cfg", 5.0)))
    assert sdxl.default_s is None  # no floor for a model this machine never ran
    assert sdxl > 30 * 1000  # far over any budget on a CPU, not the tiny model's seconds
    with pytest.raises(EngineError, match="cannot be timed on this machine"):
        engine.estimate_seconds(Request(model="someone/some-model", prompt="a red circle"))


def test_a_slow_run_counts_for_a_minute(engine, monkeypatch):
    req = _text()
    idle = engine.estimate_seconds(req)
    fixed, steps = engine.meter.work(engine, req)
    engine.meter.observe(engine, req, 9 * fixed, 9 * steps)  # a shape's first run: loading and tracing
    assert float(engine.estimate_seconds(req)) == pytest.approx(float(idle))
    engine.meter.observe(engine, req, 3 * fixed, 3 * steps)
    assert float(engine.estimate_seconds(req)) == pytest.approx(3 * float(idle))
    later = time.monotonic() + meter_module.SLOWDOWN_WINDOW_S + 1
    monkeypatch.setattr(meter_module.time, "monotonic", lambda: later)
    assert float(engine.estimate_seconds(req)) == pytest.approx(float(idle))


def test_callback_time_is_not_the_runs(engine):
    req = _text(steps=4)
    engine.estimate_seconds(req)
    engine.generate(req, callback=lambda info: time.sleep(0.2))  # 0.8 s of a slow page
    _, outside, steps = engine.meter._slowdowns[""][-1]
    assert steps * engine.meter.work(engine, req)[1] < 0.4


def test_estimates_add_up_with_a_floor():
    grid = total([Estimate(1.0, 2.0), Estimate(3.0, 1.0)], default_s=9.0)
    assert float(grid) == pytest.approx(5.0) and grid.work_s == pytest.approx(4.0) and grid.default_s == 9.0
    assert float(total([1.0, 2.0])) == pytest.approx(3.0)  # plain seconds too


def test_an_admitted_run_stops_at_twice_its_budget_and_keeps_its_estimate(engine):
    req = _text(steps=400)
    engine.estimate_seconds(req)
    admit(0.2)
    context, limit = run_context()
    assert current_limit() is None  # taken: nothing after the request inherits it
    result = context.run(engine.generate, req)
    assert result.note.startswith("Stopped after ") and "twice the 0.2 s work budget" in result.note
    done, steps = limit.stops[0]
    assert 0 < done < steps == 400
    assert len(result.images) == 1 and result.images[0].size == engine.native_size("tiny-sd")
    assert limit.note().startswith(f"The run was stopped after {done} of 400 steps")
    assert engine.generate(_text(steps=3)).note == ""  # outside that context, no limit

    admit(0.2)  # a run recording attention maps, on the model thread, keeps the request's limit too
    context, _ = run_context()
    result, _ = context.run(generate_with_attention, engine, req)  # its maps: of the last steps, never reached
    assert result.note.startswith("Stopped after ")


def test_a_run_limit_says_what_stopped():
    limit = RunLimit(30.0)
    assert limit.note() is None and not limit.passed()
    limit.start()
    limit.stopped(12, 300)
    limit.stopped(5, 25)
    assert limit.note() == ("2 runs were stopped at twice the 30 s work budget; their images are each run's "
                            "estimate at the step it reached.")
