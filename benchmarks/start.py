"""Cold start to serving: seconds from `python app.py` to the page answering, `python -m benchmarks.start [--runs N]`.

Each run starts the app in a process of its own on a free port, as a person would, and polls the page.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose app.py is started, unless the current folder has one


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seconds_to_serve(limit_s: float = 180.0) -> float:
    """One cold start: the app's process started, the seconds until its page answers 200."""
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port)}
    started = time.perf_counter()
    root = Path.cwd() if (Path.cwd() / "app.py").is_file() else ROOT
    server = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < limit_s:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    if page.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the app did not answer within {limit_s:g} s")
    finally:
        server.terminate()
        server.wait(30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    times = [seconds_to_serve() for _ in range(args.runs)]
    print(f"cold start to serving: median {statistics.median(times):.1f} s (runs: "
          f"{', '.join(f'{t:.1f}' for t in times)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
