"""The app's files: one folder of this instance's own (Gradio's uploads and every output, one copy each), swept by
age and total size while serving; folders that earlier or other instances left behind are never served from, and
the ones whose process has ended are removed at start."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

PARENT = Path(tempfile.gettempdir()) / "guidance-lab"
MAX_AGE_S = 3600
MAX_BYTES = 500 * 2**20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path = PARENT, max_age_s: float = MAX_AGE_S) -> None:
    """Remove instance folders whose process has ended, or that nothing has touched for `max_age_s`."""
    if not parent.is_dir():
        return
    for folder in parent.iterdir():
        pid = folder.name.split("-")[0]
        ended = not pid.isdigit() or not _alive(int(pid))
        old = time.time() - folder.stat().st_mtime > max_age_s
        if folder.is_dir() and (ended or old):
            shutil.rmtree(folder, ignore_errors=True)


class Storage:
    """This instance's folder; `sweep()` deletes files older than `max_age_s`, then the oldest until the folder holds
    at most `max_bytes`; `start()` sweeps every `every_s` seconds on a daemon thread."""

    def __init__(self, parent: Path = PARENT, max_age_s: float | None = None, max_bytes: int | None = None):
        self.max_age_s = max_age_s if max_age_s is not None else float(os.environ.get("LAB_FILE_AGE_S", MAX_AGE_S))
        disk_mb = int(os.environ.get("LAB_DISK_MB", MAX_BYTES >> 20))
        self.max_bytes = max_bytes if max_bytes is not None else disk_mb << 20
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, self.max_age_s)
        self.folder = parent / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir()
        self._stop = threading.Event()

    def files(self) -> list[tuple[float, int, Path]]:
        """(modified time, bytes, path) of every file, oldest first."""
        found = []
        for path in self.folder.rglob("*"):
            try:
                if path.is_file():
                    stat = path.stat()
                    found.append((stat.st_mtime, stat.st_size, path))
            except FileNotFoundError:  # removed by Gradio meanwhile
                continue
        return sorted(found)

    def size(self) -> int:
        return sum(size for _, size, _ in self.files())

    def sweep(self) -> int:
        """Delete what is too old or over the size cap; returns how many files went."""
        now, removed = time.time(), 0
        files = self.files()
        total = sum(size for _, size, _ in files)
        for mtime, size, path in files:
            if now - mtime > self.max_age_s or total > self.max_bytes:
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
        return removed

    def start(self, every_s: float = 60.0) -> "Storage":
        def loop():
            while not self._stop.wait(every_s):
                self.sweep()

        threading.Thread(target=loop, name="storage-sweep", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()
        shutil.rmtree(self.folder, ignore_errors=True)


_process_storage: Storage | None = None
_process_lock = threading.Lock()


def process_storage() -> Storage:
    """This process's Storage, made (and its sweeper started) on first use. Gradio reads its upload folder from
    GRADIO_TEMP_DIR per request, so every app this process serves shares the one folder."""
    global _process_storage
    with _process_lock:
        if _process_storage is None:
            _process_storage = Storage().start()
            os.environ["GRADIO_TEMP_DIR"] = str(_process_storage.folder)
        return _process_storage
