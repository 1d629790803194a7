"""Every failure of a handler as one gr.Error sentence: the engine's own sentence as written, anything else by its
type only (its message may hold server paths), with the traceback kept in the server's log."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from engine.errors import EngineError

from .inputs import refused

log = logging.getLogger("guidance_lab")


def as_error(exc: Exception, where: str) -> gr.Error:
    """One gr.Error sentence for any failure: EngineError as written (at most 300 characters, a refusal that logs
    no traceback), anything else by its type only (its message may hold server paths), with the traceback kept in
    the log."""
    if isinstance(exc, gr.Error):
        return refused(exc.message)
    if isinstance(exc, EngineError):
        return refused(str(exc))
    if isinstance(exc, RecursionError):
        return refused("The input is nested too deeply to read.")
    log.error("unexpected failure in %s", where, exc_info=exc)
    return gr.Error(f"The request failed unexpectedly ({type(exc).__name__}); the server's log has the details.")


def guarded(fn):
    """Map every failure of a handler (or of a generator handler, at any yield) to one gr.Error sentence."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise as_error(exc, fn.__name__) from None

        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise as_error(exc, fn.__name__) from None

    return wrapper
