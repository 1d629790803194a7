"""Fair service for strangers: a run belongs to a connected client, and no client holds more than its share.

Gradio's queue (gradio/queueing.py) runs every pushed event to its end, whether or not anyone reads its result:
a job POSTed to /gradio_api/call/<api> waits for a GET of /gradio_api/call/<api>/<event_id>, and the page and
gradio_client read theirs from the session's SSE stream (/gradio_api/queue/data); both streams read the session's
message queue (`pending_messages_per_session`). `FairQueue` watches those reads:

- a queued event starts only once its result stream is open, so jobs that nobody reads never hold the worker, and
  one whose stream is not open STREAM_WAIT_S after its call (LAB_STREAM_WAIT_S) is dropped; a full queue makes
  room for a newcomer by dropping its oldest unread job; a stream opened later reads why, in one sentence;
- a session has at most one queued or running model job, and a client address RUNS_PER_ADDRESS
  (LAB_RUNS_PER_ADDRESS); the rest are refused in one sentence, in the session's stream where it has one (the
  page, gradio_client), else as the HTTP answer of the call.

A client's address is the peer Gradio sees (uvicorn already resolves X-Forwarded-For for loopback peers), or the
leftmost X-Forwarded-For address when that peer is a trusted proxy (`client_address`). Loopback callers (the MCP
bridge, local scripts and benchmarks) have no address limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import time
import uuid

import gradio as gr
from gradio import route_utils
from gradio.queueing import Queue
from gradio.server_messages import ProcessCompletedMessage
from gradio.utils import LRUCache, error_payload, run_coro_in_background

from .streaming import MODEL_EVENT

STREAM_WAIT_S = 5.0  # a job's result stream must open this soon after its call; LAB_STREAM_WAIT_S overrides
RUNS_PER_ADDRESS = 3  # queued or running model jobs per client address; LAB_RUNS_PER_ADDRESS overrides
WATCH_S = 0.25  # how often unread jobs are looked for
LINGER_S = 60.0  # how long a dropped or refused job's sentence waits for a late stream

log = logging.getLogger("guidance_lab")

ALREADY_RUNNING = "You already have a run in progress; wait for it to finish or press Stop."


def _setting(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:
        raise ValueError(f"{name} must be a number of at least {minimum:g}, not {raw!r}.")
    return value


def stream_wait_s() -> float:
    return _setting("LAB_STREAM_WAIT_S", STREAM_WAIT_S, 0.5)


def runs_per_address() -> int:
    return int(_setting("LAB_RUNS_PER_ADDRESS", RUNS_PER_ADDRESS, 1))


def trusted_proxies() -> list | None:
    """The peers whose X-Forwarded-For is honoured, from LAB_TRUSTED_PROXIES (addresses or networks, comma-separated;
    '*' = any peer); None means any. By default none, except on a Hugging Face Space (SPACE_ID set), where every
    peer is the Space's proxy."""
    raw = os.environ.get("LAB_TRUSTED_PROXIES", "*" if os.environ.get("SPACE_ID") else "").strip()
    if raw == "*":
        return None
    networks = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"LAB_TRUSTED_PROXIES holds {item!r}, which is not an address or a network.") from None
    return networks


def _ip(host: str | None):
    try:
        return ipaddress.ip_address(host or "")
    except ValueError:
        return None


def client_address(request) -> str | None:
    """The address of the client behind `request` (a gr.Request or a Starlette request), honouring the
    X-Forwarded-For of the proxies that LAB_TRUSTED_PROXIES trusts."""
    return forwarded_address(request, trusted_proxies())


def forwarded_address(request, trusted: list | None) -> str | None:
    """The leftmost address of X-Forwarded-For when the peer (request.client.host, as Gradio sees it) is in
    `trusted` (None: any peer), else the peer."""
    peer = getattr(getattr(request, "client", None), "host", None)
    ip = _ip(peer)
    if trusted is not None and (ip is None or not any(ip in net for net in trusted)):
        return peer
    headers = getattr(request, "headers", None) or {}
    values = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [headers.get("x-forwarded-for")]
    first = ",".join(v for v in values if v).split(",")[0].strip()
    return first or peer


def _unlimited(address: str | None) -> bool:
    """No address to tell clients apart by, or the machine's own callers."""
    ip = _ip(address)
    return address is None or (ip is not None and ip.is_loopback)


class _Messages(asyncio.Queue):
    """A session's message queue that knows when its result stream reads it."""

    def __init__(self):
        super().__init__()
        self.readers = 0
        self.read_at = float("-inf")

    async def get(self):
        self.readers += 1
        try:
            return await super().get()
        finally:
            self.readers -= 1
            self.read_at = time.monotonic()

    def read_since(self, moment: float) -> bool:
        return self.readers > 0 or self.read_at >= moment


class _Sessions(LRUCache):
    """Gradio's per-session message queues, each created as a `_Messages`."""

    def __setitem__(self, key, value) -> None:
        if type(value) is asyncio.Queue and value.empty():
            value = _Messages()
        super().__setitem__(key, value)


def _failure(sentence: str, event_id: str | None = None) -> ProcessCompletedMessage:
    output = error_payload(gr.Error(sentence, print_exception=False), True)
    return ProcessCompletedMessage(output=output, success=False, title="Error", event_id=event_id)


class FairQueue(Queue):
    """Gradio's queue, serving only clients that read their results, a model job per session and a few per
    address (see the module's docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending_messages_per_session = _Sessions(self.pending_messages_per_session.max_size)
        self._admitting: list[tuple[str | None, str | None]] = []  # (session, address) of jobs being pushed
        self._lingering: dict[str, tuple[str, float]] = {}  # event id -> (session, when its entry is forgotten)

    @classmethod
    def replacing(cls, queue: Queue) -> FairQueue:
        return cls(live_updates=queue.live_updates, concurrency_count=queue.max_thread_count,
                   update_intervals=queue.update_intervals, max_size=queue.max_size, blocks=queue.blocks,
                   default_concurrency_limit=queue.default_concurrency_limit)

    def start(self):
        super().start()
        run_coro_in_background(self._watch)

    # Admission

    async def push(self, body, request, username):
        try:
            job = route_utils.get_fn(self.blocks, None, body).concurrency_id == MODEL_EVENT["concurrency_id"]
        except Exception:  # Gradio's own push answers a call it cannot place
            job = False
        client = (body.session_hash, client_address(request)) if job else None
        refusal = client and self._refusal(*client)
        if refusal:
            return self._refuse(body.session_hash, refusal)
        if client:
            self._admitting.append(client)
        try:
            self._make_room()
            pushed, event_id, state = await super().push(body, request, username)
        finally:
            if client:
                self._admitting.remove(client)
        event = self.event_ids_to_events.get(event_id) if pushed and client else None
        if event is not None:
            event.lab_client = client
        return pushed, event_id, state

    def _refusal(self, session: str | None, address: str | None) -> str | None:
        held = [e.lab_client for e in self.event_ids_to_events.values()
                if getattr(e, "lab_client", None) and not getattr(e, "lab_done", False)] + self._admitting
        if session is not None and (session, address) in held:  # a shared loopback session is one per address
            return ALREADY_RUNNING
        limit = runs_per_address()
        if not _unlimited(address) and sum(a == address for _, a in held) >= limit:
            return (f"Your address already has {limit} run{'s' if limit > 1 else ''} in progress; wait for one to "
                    f"finish or press Stop.")
        return None

    def _refuse(self, session: str | None, sentence: str):
        """Answer a refused call in its session's stream where the session is known and has no refusal unread
        there already (so a session holds at most one), else over HTTP."""
        messages = self.pending_messages_per_session.get(session) if session else None
        pending = self.pending_event_ids_session.get(session, ())
        if messages is None or any(s == session and e in pending for e, (s, _) in self._lingering.items()):
            return False, sentence, "error"
        event_id = uuid.uuid4().hex
        self.pending_event_ids_session.setdefault(session, set()).add(event_id)
        messages.put_nowait(_failure(sentence, event_id))
        self._lingering[event_id] = (session, time.monotonic() + LINGER_S)
        return True, event_id, "success"

    def send_message(self, event, event_message):
        if isinstance(event_message, ProcessCompletedMessage):
            event.lab_done = True  # no longer held, though Gradio keeps it until its run has wound down
        super().send_message(event, event_message)

    # Scheduling: a job whose stream is not open never starts

    def _streamed(self, event) -> bool:
        messages = self.pending_messages_per_session.get(event.session_hash)
        return isinstance(messages, _Messages) and messages.read_since(event.enqueue_time)

    def get_events(self):
        """Gradio's pick of the next events, taking the first event whose stream is open instead of the first."""
        concurrency_ids = list(self.event_queue_per_concurrency_id)
        random.shuffle(concurrency_ids)  # as Gradio: no group of events is always served first
        for concurrency_id in concurrency_ids:
            queue = self.event_queue_per_concurrency_id[concurrency_id]
            if queue.concurrency_limit is not None and queue.current_concurrency >= queue.concurrency_limit:
                continue
            ready = [event for event in queue.queue if self._streamed(event)]
            if not ready:
                continue
            fn = ready[0].fn
            events = [e for e in ready if e.fn == fn][: fn.max_batch_size] if fn.batch else ready[:1]
            for event in events:
                queue.queue.remove(event)
            return events, fn.batch, concurrency_id
        return None

    def _make_room(self) -> None:
        """In a full queue, drop the oldest job that nobody reads."""
        if self.max_size is None or len(self) < self.max_size:
            return
        unread = [e for q in self.event_queue_per_concurrency_id.values() for e in q.queue if not self._streamed(e)]
        if unread:
            self._drop(min(unread, key=lambda e: e.enqueue_time),
                       "This run was dropped to make room in the full queue, as its result stream was not open.")

    def _drop(self, event, sentence: str) -> None:
        queue = self.event_queue_per_concurrency_id[event.concurrency_id]
        if event not in queue.queue:
            return
        queue.queue.remove(event)
        self.event_ids_to_events.pop(event._id, None)
        if (record := self.event_analytics.get(event._id)) is not None:
            record["status"] = "cancelled"
        if event.session_hash in self.pending_messages_per_session:
            self.send_message(event, _failure(sentence))
        self._lingering[event._id] = (event.session_hash, time.monotonic() + LINGER_S)
        self.broadcast_estimations(event.concurrency_id)

    async def _watch(self) -> None:
        """Sweep every WATCH_S while the queue runs."""
        while not self.stopped:
            await asyncio.sleep(WATCH_S)
            try:
                self._sweep()
            except Exception:  # never let one bad pass stop the watch
                log.exception("the watch over unread jobs failed")

    def _sweep(self) -> None:
        """Drop the jobs whose stream did not open in time; forget the sentences that no stream came for."""
        now, wait = time.monotonic(), stream_wait_s()
        for queue in list(self.event_queue_per_concurrency_id.values()):
            for event in [e for e in queue.queue if now - e.enqueue_time > wait and not self._streamed(e)]:
                api = event.fn.api_name or "<api>"
                self._drop(event, f"This run was dropped because its result stream was not opened within "
                                  f"{wait:g} s; open /gradio_api/call/{api}/<event_id> right after the call.")
        for event_id, (session, until) in list(self._lingering.items()):
            if until <= now:
                del self._lingering[event_id]
                ids = self.pending_event_ids_session.get(session)
                if ids is not None:
                    ids.discard(event_id)
                    if not ids:
                        self.pending_event_ids_session.pop(session, None)


def install(demo: gr.Blocks) -> gr.Blocks:
    """Serve `demo`'s queue (set up by demo.queue()) fairly; the settings are checked here, at start-up."""
    stream_wait_s(), runs_per_address(), trusted_proxies()
    demo._queue = FairQueue.replacing(demo._queue)
    return demo
