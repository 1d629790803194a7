"""The app's files: one folder of this instance's own (Gradio's uploads and every output, one copy each), swept by
age and by a disk quota per session while serving; folders that earlier or other instances left behind are never
served from, and the ones whose process has ended are removed at start.

Each file is charged to the sessions whose events sent it in or out (`Storage.claim`); uploads that no event has
used yet, and the outputs of calls without a session, are charged to one pool of their own. A sweep deletes files
past their time to live; then, from every session over its quota, its oldest files; then, while the folder is over
its total, the oldest files of the largest session (of equal ones, the least recently active). A flood of uploads
therefore costs the flood's own files, never the fresh outputs of the sessions that stay within their share."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable

PARENT = Path(tempfile.gettempdir()) / "guidance-lab"
MAX_AGE_S = 3600
MAX_BYTES = 500 * 2**20
SESSION_BYTES = 100 * 2**20  # one session's share; an SDXL run of 16 images with its live previews is under 60 MB
UNCLAIMED = ""  # the pool of uploads no event has used yet, and of outputs of calls without a session
UPLOAD_ROUTE = "/upload"


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
    """This instance's folder. `sweep()` deletes files older than `max_age_s`, then what each session holds over
    `session_bytes`, then the largest sessions' oldest files until the folder holds at most `max_bytes`; `start()`
    sweeps every `every_s` seconds on a daemon thread, and at once after a quarter of a session's share has been
    uploaded (`wrote`)."""

    def __init__(self, parent: Path = PARENT, max_age_s: float | None = None, max_bytes: int | None = None,
                 session_bytes: int | None = None):
        self.max_age_s = max_age_s if max_age_s is not None else float(os.environ.get("LAB_FILE_AGE_S", MAX_AGE_S))
        disk_mb = int(os.environ.get("LAB_DISK_MB", MAX_BYTES >> 20))
        self.max_bytes = max_bytes if max_bytes is not None else disk_mb << 20
        session_mb = int(os.environ.get("LAB_SESSION_MB", SESSION_BYTES >> 20))
        self.session_bytes = session_bytes if session_bytes is not None else session_mb << 20
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, self.max_age_s)
        self.folder = parent / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir()
        self._prefix = os.path.abspath(self.folder) + os.sep
        self._holders: dict[str, set[str]] = {}  # file -> the sessions it was sent to or from
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._written = 0

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

    def claim(self, session: str | None, paths: Iterable[str]) -> None:
        """Charge the files of this folder among `paths` to `session` (None or '': the unclaimed pool)."""
        session = session or UNCLAIMED
        with self._lock:
            for path in paths:
                path = os.path.abspath(path)
                if path.startswith(self._prefix):
                    holders = self._holders.setdefault(path, set())
                    if session != UNCLAIMED:
                        holders.discard(UNCLAIMED)
                        holders.add(session)

    def holders(self, path) -> set[str]:
        """The sessions `path` is charged to ({UNCLAIMED} for an upload no event has used)."""
        with self._lock:
            return set(self._holders.get(os.path.abspath(path)) or {UNCLAIMED})

    def usage(self) -> dict[str, int]:
        """Bytes charged to each session (a file held by several counts for each)."""
        used: dict[str, int] = {}
        for _, size, path in self.files():
            for session in self.holders(path):
                used[session] = used.get(session, 0) + size
        return used

    def wrote(self, nbytes: int) -> None:
        """Note `nbytes` received (an upload); a quarter of a session's share since the last sweep starts one now."""
        self._written += nbytes
        if self._written >= max(1, min(self.session_bytes, self.max_bytes) // 4):
            self._wake.set()

    def sweep(self) -> int:
        """Delete what is past its age, over a session's quota, or over the folder's total (the largest sessions'
        oldest files first); returns how many files went."""
        self._written = 0
        now, removed = time.time(), 0
        kept = []
        for mtime, size, path in self.files():
            if now - mtime > self.max_age_s:
                path.unlink(missing_ok=True)
                removed += 1
            else:
                kept.append((mtime, size, str(path)))
        with self._lock:
            present = {path for _, _, path in kept}
            self._holders = {p: h for p, h in self._holders.items() if p in present}
            holders = {path: set(self._holders.get(path) or {UNCLAIMED}) for path in present}
        held: dict[str, list[tuple[float, int, str]]] = {}
        for entry in kept:  # oldest first
            for session in holders[entry[2]]:
                held.setdefault(session, []).append(entry)
        used = {session: sum(size for _, size, _ in entries) for session, entries in held.items()}
        total = sum(size for _, size, _ in kept)

        released: list[tuple[str, str]] = []

        def release(session: str) -> None:
            nonlocal total, removed
            _, size, path = held[session].pop(0)
            used[session] -= size
            holders[path].discard(session)
            released.append((path, session))
            if not holders[path]:
                Path(path).unlink(missing_ok=True)
                total -= size
                removed += 1

        for session in held:
            while used[session] > self.session_bytes and held[session]:
                release(session)
        while total > self.max_bytes:
            candidates = [s for s in held if held[s]]
            if not candidates:
                break
            release(max(candidates, key=lambda s: (used[s], -held[s][-1][0])))  # largest, then least recent
        with self._lock:
            for path, session in released:
                self._holders.get(path, set()).discard(session)
        return removed

    def start(self, every_s: float = 60.0) -> "Storage":
        def loop():
            while not self._stop.is_set():
                self._wake.wait(every_s)
                self._wake.clear()
                if not self._stop.is_set():
                    self.sweep()

        threading.Thread(target=loop, name="storage-sweep", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        shutil.rmtree(self.folder, ignore_errors=True)


class UploadWatch:
    """ASGI middleware that tells the Storage how many bytes each upload sent, so that a flood of uploads is swept
    within moments, not at the next minute."""

    def __init__(self, app, storage: Storage):
        self.app, self.storage = app, storage

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(UPLOAD_ROUTE):
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            self.storage.wrote(received)


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
