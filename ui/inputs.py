"""Input components and the Blocks subclass that answer every malformed value with one sentence.

Gradio's own preprocessing errors name the component's index and repeat Python's reprs; a public Space needs a
sentence that names the parameter and says what it takes, never a server path. So every value is checked against
its component (a number within the slider's range, one of the radio's choices, a file uploaded here, ...) before
Gradio reads it, and what a component still refuses is rephrased with the parameter's name. Uploaded images are
checked from their header before any pixel is decoded, so an oversized picture costs a few bytes of reading, not
gigabytes. Every refusal is one line in the log, never a traceback."""

from __future__ import annotations

import inspect
import json
import logging
import math
import re

import gradio as gr
from fastapi.responses import JSONResponse
from gradio.exceptions import ComponentProcessingError
from gradio.route_utils import FnIndexInferError
from PIL import Image
from starlette.middleware import Middleware

from engine.control.prepare import ImageRefused, check_image_header, read_image

from .storage import UploadWatch

MAX_MESSAGE = 300  # characters; longer answers are cut (they would only be echoing the input back)
MAX_QUOTE = 60  # characters of a bad value quoted back
MAX_LISTED = 12  # choices a message lists; more are left to the API page
log = logging.getLogger("guidance_lab")


def shown(value, limit: int = MAX_QUOTE) -> str:
    """A value as a message quotes it, in the caller's own terms (text in quotes, numbers, true/false/null, JSON
    lists and objects), at most `limit` characters: longer ones are cut with an ellipsis."""
    if isinstance(value, str):
        inner = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                        for c in value[:limit])
        return f"'{inner}'" if len(inner) <= limit - 2 else f"'{inner[:limit - 3]}…'"
    try:
        text = json.dumps(value, allow_nan=True, ensure_ascii=False, default=lambda o: f"<{type(o).__name__}>")
    except (ValueError, TypeError, RecursionError):  # an integer of thousands of digits, or a cycle
        text = "a number of thousands of digits" if isinstance(value, int) else f"a {type(value).__name__}"
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit + 1])
    if len(text) <= limit:
        return text
    if isinstance(value, (list, tuple)):  # cut JSON would leave a quote open
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    if isinstance(value, dict):
        return f"an object with {len(value)} key{'s' * (len(value) != 1)}"
    return text[:limit - 1] + "…"


def sentence(message: str) -> str:
    """One line of at most MAX_MESSAGE characters."""
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


class Refusal(ValueError):
    """A component's refusal of a value: `reason` completes a sentence that starts with the parameter's name, e.g.
    "could not be read as an image; ..." (see LabBlocks._format_processing_error)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def refused(message: str) -> gr.Error:
    """A gr.Error for a refused request: one sentence, no traceback in the log (LabBlocks logs one line)."""
    return gr.Error(sentence(message), print_exception=False)


class ImageInput(gr.Image):
    """gr.Image whose handler gets an RGB PIL image, decoded only from the allowed formats and checked for size
    from its header before decoding, and whose unreadable uploads become one sentence; never a server path."""

    def get_block_name(self) -> str:
        return "image"  # the same front-end component as gr.Image

    def preprocess(self, payload) -> Image.Image | None:
        if payload is None:
            return None
        path = getattr(payload, "path", None)
        if not isinstance(path, str):
            raise Refusal("must be an image uploaded through the client")
        try:
            return read_image(path)
        except ImageRefused as exc:
            raise Refusal(exc.reason) from None


class SketchInput(gr.Sketchpad):
    """gr.Sketchpad whose layers are checked for format and size from their headers before Gradio decodes them."""

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
                except ImageRefused as exc:
                    raise Refusal(exc.reason) from None
        try:
            return super().preprocess(payload)
        except Exception:
            raise Refusal("could not be read as a drawing") from None


class SeedInput(gr.Textbox):
    """The seed as text, so every whole number up to 2^63 - 17 reaches the engine exactly (a browser's number
    field rounds above 2^53); the API takes an integer or its digits."""

    def get_block_name(self) -> str:
        return "textbox"

    def preprocess(self, payload) -> int | str | None:
        if isinstance(payload, bool):
            raise Refusal(f"must be a whole number, not {shown(payload)}")
        if isinstance(payload, int) or payload is None:
            return payload
        if isinstance(payload, float):
            if payload.is_integer() and abs(payload) < 2**53:
                return int(payload)
            raise Refusal(f"must be a whole number (send large seeds as integers or digits), not {shown(payload)}")
        text = str(payload).strip()
        if re.fullmatch(r"\d{1,20}", text):
            return int(text)
        raise Refusal(f"must be a whole number, not {shown(payload)}")

    def api_info(self) -> dict:
        return {"anyOf": [{"type": "integer"}, {"type": "string"}], "description": "a whole number (or its digits)"}


def _parameter_name(block_fn, index: int, block) -> str:
    try:
        names = list(inspect.signature(block_fn.fn).parameters)
        return names[index]
    except (TypeError, ValueError, IndexError):
        return getattr(block, "label", None) or f"input {index + 1}"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choices(values: list) -> str:
    if len(values) > MAX_LISTED:
        return f"the {len(values)} offered values (the API page lists them)"
    return ", ".join(shown(v) for v in values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _offered(value, choices: list) -> bool:
    """Whether `value` is one of `choices` as sent (text as text, a number as a number; never true for 1)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    return any(value == c and isinstance(value, str) == isinstance(c, str) for c in choices)


def _problem(block, value) -> str | None:
    """Why `value` cannot be given to `block`, completing "The <parameter> ...", or None where it can (or where
    the component checks it itself)."""
    if isinstance(block, (ImageInput, SketchInput)) or getattr(block, "data_model", None) is not None:
        return _file_problem(block, value)
    if isinstance(block, SeedInput):  # it reads numbers and text itself; anything else is refused before Gradio
        return None if value is None or isinstance(value, (int, float, str)) else \
            f"must be a whole number, not {shown(value)}"
    if isinstance(block, (gr.Slider, gr.Number)):
        low, high = block.minimum, block.maximum
        if value is None and isinstance(block, gr.Number):
            return None
        if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)) \
                or (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                return f"must be a number from {_number(low)} to {_number(high)}, not {shown(value)}"
            return f"must be a finite number, not {shown(value)}"
        return None
    if isinstance(block, gr.Checkbox):
        return None if value is None or isinstance(value, bool) else f"must be true or false, not {shown(value)}"
    choices = [v for _, v in getattr(block, "choices", None) or []]
    if isinstance(block, gr.CheckboxGroup):
        if not isinstance(value, list):
            return f"must be a list of some of {_choices(choices)}, not {shown(value)}"
        bad = [v for v in value if not _offered(v, choices)]
        return f"must be a list of some of {_choices(choices)}; {shown(bad[0])} is not one of them" if bad else None
    if isinstance(block, gr.Radio) or (isinstance(block, gr.Dropdown) and not block.allow_custom_value):
        picked = value if isinstance(block, gr.Dropdown) and block.multiselect and isinstance(value, list) else [value]
        bad = [v for v in picked if v is not None and not _offered(v, choices)]
        return f"must be one of {_choices(choices)}, not {shown(bad[0])}" if bad else None
    if isinstance(block, gr.Dropdown):  # custom values allowed: the handler checks them
        if isinstance(value, (list, dict, bool)) and not block.multiselect:
            return f"must be one name, not {shown(value)}"
        return None
    if isinstance(block, gr.Textbox):
        return None if value is None or isinstance(value, str) or _is_number(value) else \
            f"must be text, not {shown(value)}"
    if isinstance(block, (gr.Code, gr.HTML)):
        return None if value is None or isinstance(value, str) else f"must be text, not {shown(value)}"
    return None


def _file_problem(block, value) -> str | None:
    """A file component's value: None, or the payload of files uploaded to this server, as the API page shows."""
    if value is None:
        return None
    what = "a drawing" if isinstance(block, gr.ImageEditor) else "an image" if isinstance(block, gr.Image) else \
        "a file"
    expected = f"must be {what} uploaded through the client (a file payload from this server's upload route)"
    stack, seen = [value], 0
    while stack and seen < 1000:  # every path the payload names must be one of this server's uploads
        item, seen = stack.pop(), seen + 1
        if isinstance(item, dict):
            path = item.get("path")
            if path is not None and not (isinstance(path, str) and _uploaded(block, path)):
                return expected
            stack.extend(v for k, v in item.items() if k != "path")
        elif isinstance(item, list):
            stack.extend(item)
    try:
        block.data_model.model_validate(value, context={"validate_meta": True})
    except Exception:  # pydantic's ValidationError, or a value of the wrong kind altogether
        return expected
    return None


def _uploaded(block, path: str) -> bool:
    from gradio.utils import is_in_or_equal

    try:
        return is_in_or_equal(path, block.GRADIO_CACHE)
    except (ValueError, OSError, TypeError):
        return False


def _expected(block) -> str:
    kinds = {"slider": "a number", "number": "a number", "checkbox": "true or false", "textbox": "text",
             "dropdown": "one of the offered names", "radio": "one of the offered names", "image": "an uploaded image",
             "checkboxgroup": "a list of the offered names", "code": "text", "imageeditor": "a drawing"}
    return kinds.get(block.get_block_name(), "a value of the kind the API page gives")


def _rephrased(message: str) -> str:
    """A component's own refusal without Python's reprs: Gradio's "Value: X (type: <class 'T'>) is not in the list
    of choices: [...]" and "Value N is greater than maximum value M." as this app's sentences."""
    found = re.fullmatch(r"Value: (.*?)(?: \(type: <class '\w+'>\))? is not in the list of choices: \[(.*)\]",
                         message, re.S)
    if found:
        return f"{found.group(1)[:MAX_QUOTE]} is not one of the choices: {found.group(2)}."
    found = re.fullmatch(r"Value (\S+) is (less|greater) than (minimum|maximum) value (\S+)\.", message)
    if found:
        return f"The value {found.group(1)[:MAX_QUOTE]} is {found.group(2)} than the {found.group(3)}, " \
               f"{found.group(4)}."
    return message


def _paths(data, limit: int = 10_000):
    """Every file path in a payload or an output (FileData dicts), breadth first, at most `limit` items looked at."""
    stack, seen = [data], 0
    while stack and seen < limit:
        item, seen = stack.pop(), seen + 1
        if isinstance(item, dict):
            if isinstance(item.get("path"), str):
                yield item["path"]
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "path") and isinstance(getattr(item, "path"), str):  # FileData models
            yield item.path


async def _unknown_endpoint(request, exc):
    """404, not 500, for a call to an api_name (or a queue index) this app does not have."""
    if isinstance(exc, KeyError) and not request.url.path.endswith("/queue/join"):
        log.error("unexpected failure at %s", request.url.path, exc_info=exc)
        return JSONResponse({"detail": "The server failed unexpectedly; its log has the details."}, 500)
    name = request.path_params.get("api_name")
    which = f"named {shown(name)}" if name else "with that index"
    return JSONResponse({"detail": f"This app has no endpoint {which}; its API page lists them."}, 404)


def _mcp_refusal(tool, arguments) -> str | None:
    """One sentence for arguments that do not match an MCP tool's input schema (naming the parameter, quoting
    the value at most MAX_QUOTE characters), or None where they match."""
    import jsonschema

    schema = getattr(tool, "inputSchema", None)
    if not schema:
        return None
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema)
                                             .iter_errors(arguments))
    if error is None:
        return None
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in (arguments or {})]
        return f"The {missing[0] if missing else 'call'} parameter is required."
    if not error.path:
        return "The arguments must be an object of parameter names and values, as the tool's schema gives."
    name = error.path[0]
    types = {"number": "a number", "integer": "a whole number", "string": "text", "boolean": "true or false",
             "array": "a list", "object": "an object", "null": "null"}
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        expected = " or ".join(types.get(t, t) for t in wanted)
    elif error.validator == "enum":
        expected = f"one of {_choices(list(error.validator_value))}"
    elif error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        expected = f"{'at least' if 'inimum' in error.validator else 'at most'} {error.validator_value}"
    else:
        expected = "a value of the kind the tool's schema gives"
    return sentence(f"The {name} must be {expected}, not {shown(error.instance)}.")


def _quiet_mcp(server) -> None:
    """Answer an MCP call whose arguments do not match the tool's schema with one sentence naming the parameter,
    where the MCP library would echo the whole value back."""
    from mcp import types

    original = server.request_handlers.get(types.CallToolRequest)
    tool_of = getattr(server, "_get_cached_tool_definition", None)
    if original is None or tool_of is None:
        return

    async def call_tool(request):
        message = _mcp_refusal(await tool_of(request.params.name), request.params.arguments or {})
        if message is None:
            return await original(request)
        log.warning("refused MCP %s: %s", request.params.name, message)
        return server._make_error_result(message)

    server.request_handlers[types.CallToolRequest] = call_tool


class LabBlocks(gr.Blocks):
    """gr.Blocks whose input errors (a value a component cannot take, a missing input, a malformed file payload)
    are one sentence naming the parameter and one line in the log; whose files are charged to the session that
    sent or received them (ui/storage.py); that answers an unknown endpoint with 404; and whose MCP server answers
    arguments that do not match a tool's schema with one sentence."""

    @property
    def mcp_server_obj(self):
        return self.__dict__.get("_mcp_server_obj")

    @mcp_server_obj.setter
    def mcp_server_obj(self, server) -> None:  # set by Gradio when it makes the MCP server, before serving
        self.__dict__["_mcp_server_obj"] = server
        if server is not None:
            _quiet_mcp(server.mcp_server)

    def launch(self, *args, app_kwargs: dict | None = None, **kwargs):
        app_kwargs = dict(app_kwargs or {})
        app_kwargs["exception_handlers"] = {FnIndexInferError: _unknown_endpoint, KeyError: _unknown_endpoint,
                                            **app_kwargs.get("exception_handlers", {})}
        storage = getattr(self, "storage", None)
        if storage is not None:
            app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(UploadWatch, storage=storage)]
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)

    @staticmethod
    def _format_processing_error(block_fn, index, block, value, is_input, original_error) -> str:
        if not is_input:  # an unexpected failure: Gradio logs its traceback
            return "The result could not be shown; the server's log has the details."
        name = _parameter_name(block_fn, index, block)
        if isinstance(original_error, Refusal):
            return sentence(f"The {name} {original_error.reason}.")
        quoted = "" if getattr(block, "data_model", None) is not None else f", not {shown(value)}"
        return sentence(f"The {name} must be {_expected(block)}{quoted}.")

    async def preprocess_data(self, block_fn, inputs, state, explicit_call: bool = False):
        expected = len(block_fn.inputs)
        if not isinstance(inputs, list) or len(inputs) != expected:
            raise refused(f"This endpoint takes {expected} inputs; the call sent "
                          f"{len(inputs) if isinstance(inputs, list) else 'something else'}.")
        for i, block in enumerate(block_fn.inputs):
            if getattr(block, "stateful", False) or i in (getattr(block_fn, "component_prop_inputs", None) or ()):
                continue
            if state is not None and block._id in state:
                block = state[block._id]  # the session's copy, with its updated choices
            problem = _problem(block, inputs[i])
            if problem:
                raise refused(f"The {_parameter_name(block_fn, i, block)} {problem}.")
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error as exc:
            raise refused(_rephrased(exc.message)) from None
        except ComponentProcessingError as exc:  # worded by _format_processing_error
            raise refused(str(exc)) from None
        except Exception:  # validation before the components run: file payloads
            raise refused("An input could not be read; files must be uploaded through the client, and every other "
                          "value must match the API page.") from None

    async def process_api(self, block_fn, inputs, state=None, request=None, iterator=None, session_hash=None,
                          *args, **kwargs):
        fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        storage = getattr(self, "storage", None)
        if storage is not None:
            storage.claim(session_hash, _paths(inputs))
        try:
            result = await super().process_api(fn, inputs, state, request, iterator, session_hash, *args, **kwargs)
        except gr.Error as exc:  # a refusal: one line in the log (an unexpected failure logged its traceback)
            exc.print_exception = False
            log.warning("refused %s: %s", fn.api_name or fn.name, sentence(exc.message))
            raise
        if storage is not None:
            storage.claim(session_hash, _paths(result.get("data")))
        return result
