"""Input components and the Blocks subclass that answer every malformed value with one sentence.

Gradio's own preprocessing errors name the component's index and repeat Python's message; a public Space needs a
sentence that names the parameter and says what it takes, never a server path. Uploaded images are checked from
their header before any pixel is decoded, so an oversized picture costs a few bytes of reading, not gigabytes."""

from __future__ import annotations

import inspect
import re

import gradio as gr
from PIL import Image

from engine.control.prepare import check_image_header, read_image
from engine.errors import EngineError

MAX_MESSAGE = 300  # characters; longer answers are cut (they would only be echoing the input back)


def shown(value, limit: int = 40) -> str:
    """A value as a message may quote it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sentence(message: str) -> str:
    """One line of at most MAX_MESSAGE characters."""
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


class ImageInput(gr.Image):
    """gr.Image whose handler gets a PIL image checked for size from its header before decoding, and whose
    unreadable uploads become one sentence; never a server path."""

    def get_block_name(self) -> str:
        return "image"  # the same front-end component as gr.Image

    def preprocess(self, payload) -> Image.Image | None:
        if payload is None:
            return None
        path = getattr(payload, "path", None)
        if not isinstance(path, str):
            raise gr.Error("The image must be an uploaded file.")
        try:
            return read_image(path)
        except EngineError as exc:
            raise gr.Error(str(exc)) from None


class SketchInput(gr.Sketchpad):
    """gr.Sketchpad whose layers are checked for size from their headers before Gradio decodes them."""

    def get_block_name(self) -> str:
        return "imageeditor"

    def preprocess(self, payload):
        if payload is None:
            return None
        for part in (payload.background, payload.composite, *(payload.layers or [])):
            path = getattr(part, "path", None)
            if isinstance(path, str):
                try:
                    check_image_header(path)
                except EngineError as exc:
                    raise gr.Error(str(exc)) from None
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(f"The sketch could not be read ({type(exc).__name__}).") from None


class SeedInput(gr.Textbox):
    """The seed as text, so every whole number up to 2^63 - 17 reaches the engine exactly (a browser's number
    field rounds above 2^53); the API takes an integer or its digits."""

    def get_block_name(self) -> str:
        return "textbox"

    def preprocess(self, payload) -> int | str | None:
        if isinstance(payload, bool):
            raise gr.Error(f"The seed must be a whole number, not {shown(payload)}.")
        if isinstance(payload, int) or payload is None:
            return payload
        if isinstance(payload, float):
            if payload.is_integer() and abs(payload) < 2**53:
                return int(payload)
            raise gr.Error(f"The seed must be a whole number (send large seeds as integers or digits), not "
                           f"{shown(payload)}.")
        text = str(payload).strip()
        if re.fullmatch(r"\d{1,20}", text):
            return int(text)
        raise gr.Error(f"The seed must be a whole number, not {shown(payload)}.")

    def api_info(self) -> dict:
        return {"anyOf": [{"type": "integer"}, {"type": "string"}], "description": "a whole number (or its digits)"}


def _parameter_name(block_fn, index: int, block) -> str:
    try:
        names = list(inspect.signature(block_fn.fn).parameters)
        return names[index]
    except (TypeError, ValueError, IndexError):
        return getattr(block, "label", None) or f"input {index + 1}"


class LabBlocks(gr.Blocks):
    """gr.Blocks whose input errors (a value a component cannot take, a missing input, a malformed file payload)
    are one sentence naming the parameter."""

    @staticmethod
    def _format_processing_error(block_fn, index, block, value, is_input, original_error) -> str:
        name = _parameter_name(block_fn, index, block) if is_input else f"output {index + 1}"
        return sentence(f"The value given for '{name}' cannot be used ({type(original_error).__name__}): it must "
                        f"be {_expected(block)}, not {shown(value)}.")

    async def preprocess_data(self, block_fn, inputs, state, explicit_call: bool = False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error as exc:
            raise gr.Error(sentence(_choice_message(exc.message))) from None
        except Exception as exc:  # validation before the components run: counts, file payloads
            expected = len(block_fn.inputs)
            if not isinstance(inputs, list) or len(inputs) != expected:
                raise gr.Error(f"This endpoint takes {expected} inputs; the call sent "
                               f"{len(inputs) if isinstance(inputs, list) else 'something else'}.") from None
            raise gr.Error(sentence(f"An input could not be read ({type(exc).__name__}); files must be uploaded "
                                    f"through the client, and every other value must match the API page.")) from None


def _choice_message(message: str) -> str:
    """Gradio's "Value: X is not in the list of choices: [...]" with the value quoted, as every other message."""
    found = re.fullmatch(r"Value: (.*) is not in the list of choices: \[(.*)\]", message, re.S)
    if not found:
        return message
    return f"{shown(found.group(1))} is not one of the choices: {found.group(2)}."


def _expected(block) -> str:
    kinds = {"slider": "a number", "number": "a number", "checkbox": "true or false", "textbox": "text",
             "dropdown": "one of the offered names", "radio": "one of the offered names", "image": "an uploaded image",
             "checkboxgroup": "a list of the offered names", "code": "text", "sketchpad": "a drawing"}
    return kinds.get(block.get_block_name(), "a value of the kind the API page gives")
