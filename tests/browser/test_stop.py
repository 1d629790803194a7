"""Stop in a real browser: a 200-step run on the project's lab-sd ends within a second or two of the press, the
page keeps its last preview and says where it stopped, and the model is free for the next run at once."""

import os
import re
import time

import pytest

from tests.browser.test_browser import open_page

STEPS = 200
STOP_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def project_app():
    """The app on the project's own models (the registry's lab-sd, ...), with every engine run's end recorded."""
    import app
    from engine.generate import Engine

    os.environ.setdefault("LAB_MAX_WORK_S", "600")
    engine = Engine()
    ends: list[tuple[int, float, str]] = []  # (steps, time the call returned, "done" or the exception's name)
    generate = engine.generate

    def recorded(req, *args, **kwargs):
        try:
            result = generate(req, *args, **kwargs)
        except Exception as exc:
            ends.append((req.steps, time.monotonic(), type(exc).__name__))
            raise
        ends.append((req.steps, time.monotonic(), "done"))
        return result

    engine.generate = recorded
    demo = app.create_app(engine)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
    yield url, ends
    demo.close()


@pytest.fixture
def page(project_app, tmp_path):
    with open_page(project_app[0], tmp_path / "profile") as page:
        page.get_by_text("Guidance Lab").first.wait_for()
        yield page


def _set_steps(page, steps: int):
    box = page.locator("#text2img-steps input[type=number]")
    if not box.is_visible():
        page.locator("#text2img-sampling").get_by_text("Sampling").click()
    box.wait_for(state="visible")
    box.fill(str(steps))
    box.press("Enter")
    box.blur()
    page.wait_for_function("n => document.querySelector('#text2img-steps input[type=range]').value === String(n)",
                           arg=steps)


def _generating(page) -> bool:
    return page.locator("#text2img-images [data-testid=status-tracker]").evaluate(
        "e => e.classList.contains('generating') || e.classList.contains('pending')")


@pytest.mark.browser
def test_stop_ends_a_200_step_run_within_two_seconds(page, project_app):
    _, ends = project_app
    _set_steps(page, STEPS)
    page.locator("#text2img-run").click()
    preview = page.locator("#text2img-images img[alt^='x0 estimate']").first
    preview.wait_for(state="visible")  # the run is denoising: its first live preview is on the page
    assert _generating(page)

    pressed = time.monotonic()
    page.locator("#text2img-stop").click()
    page.wait_for_function("() => { const t = document.querySelector('#text2img-images [data-testid=status-tracker]');"
                           " return t && !t.classList.contains('generating') && !t.classList.contains('pending'); }",
                           timeout=10_000)
    page_ended = time.monotonic() - pressed
    toast = page.locator(".toast-body").filter(has_text="Stopped after step").first
    toast.wait_for()
    stopped_at = int(re.search(r"Stopped after step (\d+) of (\d+)", toast.inner_text()).group(1))

    deadline = time.monotonic() + 10
    while not ends and time.monotonic() < deadline:
        time.sleep(0.05)
    steps, ended, outcome = ends[-1]
    assert (steps, outcome) == (STEPS, "Stopped"), ends
    assert ended - pressed < STOP_WITHIN_S, f"the engine ran on for {ended - pressed:.2f} s after Stop"
    assert page_ended < STOP_WITHIN_S, f"the page showed the run going for {page_ended:.2f} s after Stop"
    assert 1 <= stopped_at < STEPS
    assert "x0 estimate" in preview.get_attribute("alt")  # the last preview stays; no output says Error
    assert page.locator("#text2img-images .error").count() == 0
    assert "--steps" not in page.locator("#text2img-command textarea").first.input_value()

    # The model is free at once: a 2-step run goes through, and is not held behind the stopped one.
    _set_steps(page, 2)
    page.locator("#text2img-run").click()
    page.wait_for_function("() => (document.querySelector('#text2img-command textarea') || {}).value?.includes("
                           "'--steps 2')")
    assert ends[-1][0] == 2 and ends[-1][2] == "done"
