"""The work meter: rates per batch bucket, the fastest recent run kept, and the page's callback time left out."""

import time

from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.meter import PRIOR_S, WorkMeter, bucket
from engine.request import Request


def test_buckets_group_similar_batches():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 32, 33)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5]


def test_own_bucket_first_then_the_lowest_known_rate_then_the_prior():
    meter = WorkMeter()
    assert meter.seconds_per_unit("m", "cpu", 32) == PRIOR_S["cpu"]
    meter.record("m", 100, 1.0, evals_per_step=2)  # 0.01 s/unit for single images
    meter.record("m", 100, 2.0, evals_per_step=2)  # a slower run of the same bucket is not what the machine can do
    assert meter.seconds_per_unit("m", "cpu", 2) == 0.01
    assert meter.seconds_per_unit("m", "cpu", 32) == 0.01  # no 32-batch run yet: never more than known
    meter.record("m", 100, 0.4, evals_per_step=32)
    assert meter.seconds_per_unit("m", "cpu", 32) == 0.004
    assert meter.seconds_per_unit("m", "cpu", 2) == 0.01  # small runs keep their own, higher, rate
    assert meter.seconds_per_unit("other", "cpu", 2) == PRIOR_S["cpu"]


def test_callback_time_is_not_the_models(tiny_folders):
    engine = Engine()
    req = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=4, guidance=GuidanceSettings("cfg", 5.0))
    engine.generate(req)
    plain = engine.estimate_seconds(req)
    engine.meter = WorkMeter()
    engine.generate(req, callback=lambda info: time.sleep(0.2))  # 0.8 s of a slow page
    assert engine.estimate_seconds(req) < plain + 0.2
