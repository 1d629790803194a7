"""The README's picture of the Compare tab: `python -m tools.screenshot [--out docs/compare.png]`.

Starts `python app.py` on a free port (the project's own models, on the CPU), opens the page in Debian's chromium
(headless, a fresh profile), runs the Compare tab's default grid, waits for the grid's image and saves the window,
reduced to a 256-colour PNG so that it stays small.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 1000}
START_S = 180  # the app loads its models before it serves
RUN_MS = 300_000  # the default grid takes seconds to a minute on a small CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"The app exited with status {server.returncode} before serving.")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"The app did not serve {url} within {START_S} s.")


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=["--no-sandbox"], viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(RUN_MS)
            page.goto(url)
            page.get_by_text("Guidance Lab").first.wait_for()
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-run").click()
            image = page.locator("#compare-grid img").first
            image.wait_for(state="visible")
            page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=image.element_handle())
            page.locator("#compare-run").scroll_into_view_if_needed()
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(500)  # let the plot and the tables settle
            page.screenshot(path=str(out))
        finally:
            context.close()
    picture = Image.open(out).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    picture.save(out, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot the Compare tab after its default grid.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "compare.png")
    args = parser.parse_args(argv)
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "LAB_MAX_WORK_S": os.environ.get("LAB_MAX_WORK_S", "600")}  # a slow machine still runs the default grid
    env.pop("LAB_MODEL_DIR", None)
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, server)
        shoot(url, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
