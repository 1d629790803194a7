"""docs/api.md and docs/mcp.md, generated from the app itself: `python -m tools.api_docs` writes them,
`python -m tools.api_docs --check` exits with status 1 where a committed file differs from what the app says now.

The app is built as `python app.py` builds it on a CPU (the project's own models first, the hub models offered
after them). Each endpoint comes from Gradio's API info (`Blocks.get_api_info`: name, parameters with their types
and defaults, returns) and its handler's docstring; each MCP tool from the schema Gradio's MCP server serves at
/gradio_api/mcp/schema, asked in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"
MCP_MD = ROOT / "docs" / "mcp.md"
COMMAND = "python -m tools.api_docs"
GENERATED = f"<!-- Generated from the app by `{COMMAND}`; edit tools/api_docs.py or the app, not this file. -->"
LONG = 80  # characters of a default shown in a table cell
# Settings that change what the app offers; the documented app is the one `python app.py` serves with none of them.
APP_ENV = ("LAB_MODEL_DIR", "LAB_STEPS", "LAB_ALLOW_ANY_MODEL", "SPACE_ID", "SYSTEM", "SPACES_ZERO_GPU")

API_INTRO = """\
# The app and its API

`python app.py` serves Guidance Lab on http://127.0.0.1:7860 (`GRADIO_SERVER_NAME` and `GRADIO_SERVER_PORT` change
host and port). It offers only models it can run: on a CPU the project's own from `assets/models/`, offline; on a
GPU the hub models first and the project's own after them. Settings:

- `LAB_MODEL_DIR=<folder>`: every tab offers the model folders under `<folder>` instead, each named by its folder's
  name; that name, never the path, goes into the PNG text and the reproduce command, which then runs as
  `LAB_MODEL_DIR=<folder> python -m engine generate --model <name> ...`.
- `LAB_STEPS=<n>`: the tabs' default number of steps.
- `LAB_MAX_WORK_S`: the most seconds of work one request may ask for (30; see below).
- `LAB_MODEL_MEMORY`: what the loaded models may take, as a share of the memory there is at start (0.5 of the RAM
  available on a CPU, 0.7 of a GPU's) or a size such as `6G`; past it the least recently used model not in use and
  not a tab's default is dropped.
- `--allow-any-model` or `LAB_ALLOW_ANY_MODEL=1`: model fields also take any local folder or hub id (for a private
  machine only).
- `--offload`: diffusers' model CPU offload (automatic on GPUs under 16 GB).
- `--mcp` or `GRADIO_MCP_SERVER=True`: also serve the MCP tools ([mcp.md](mcp.md)).
- `LAB_FILE_AGE_S`, `LAB_DISK_MB`: how long the app keeps uploads and outputs (an hour), and how much of them
  (500 MB).

Every image is a PNG carrying a `parameters` text chunk in AUTOMATIC1111's format, and each tab shows the
`python -m engine generate ...` command that reproduces it. Model-bound events share one worker; up to 16 more
requests wait in the queue and are told their place. Each request's work is estimated before it runs (its model evaluations,
priced from this machine's calibration of each model and the present slowdown) and refused above `LAB_MAX_WORK_S`
with a sentence saying what to reduce; each tab's default request is always admitted, and a run stops at twice its
budget, keeping its last estimate. Bad input of any kind is answered with one sentence of at most 300 characters that names no
server path ([reliability.md](reliability.md)).

The generation endpoints stream: while a run denoises they send the current x0 estimate (about twice a second, from
one second into the run) as intermediate outputs, and `predict` returns the final result. A client that disconnects
or cancels (`job.cancel()`, Gradio's `/cancel`) ends its run between two denoising steps; each tab's Stop button ends
that page's own runs the same way.

```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")
images, command, trajectory, attention = client.predict("a large red circle on the left", api_name="/text2img")
images, probs, command = client.predict("circle", api_name="/class_cond")
images, control_used, command = client.predict(handle_file("sketch.png"), "a small figure", control_type="scribble",
                                               preprocess=True, api_name="/controlnet")
grid, plot, table, matched, notes = client.predict("a red circle", api_name="/compare")
```

Below, every documented endpoint as the app declares it; the defaults are those of the CPU app.
"""

MCP_INTRO = """\
# The lab as tools for agents (MCP)

`python app.py --mcp` (or `GRADIO_MCP_SERVER=True python app.py`) also serves Gradio's MCP server. Every documented
endpoint of the API ([api.md](api.md)) becomes a tool, described by its handler's docstring; the page's own helpers
(field visibility, random seeds, tab switches, the pose editor's plumbing) are not tools. Connect a client to the
streamable HTTP endpoint, for example in a client's `mcp.json`:

```json
{"mcpServers": {"guidance-lab": {"url": "http://127.0.0.1:7860/gradio_api/mcp/"}}}
```

`http://127.0.0.1:7860/gradio_api/mcp/schema` lists the tools as below. A file input is given as an http(s) URL
(Gradio's `upload_file_to_gradio` tool uploads a local one). On a Hugging Face Space each tool's name starts with the
Space's name and an underscore.
"""


@contextmanager
def documented_env():
    """The environment of a plain `python app.py`: none of the settings that change what the app offers."""
    saved = {k: os.environ.pop(k) for k in APP_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def build_app():
    """The Blocks app as `python app.py` builds it on a CPU."""
    import app
    from engine.generate import Engine
    from ui.models import registry_choices

    return app.create_app(Engine(), registry_choices(on_gpu=False))


def one_line(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def cell(text: Any) -> str:
    """Text for a table cell: one line, pipes escaped."""
    return one_line(text).replace("|", "\\|")


def shown(value: Any) -> str:
    """A default as a cell shows it: JSON, cut after LONG characters."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > LONG:
        text = text[:LONG - 3] + "..."
    return f"`{cell(text)}`"


def unnamed(label: str | None) -> bool:
    """Gradio names an unlabelled component value_<id>, an id that moves whenever the page changes."""
    return not label or re.fullmatch(r"value_\d+", label) is not None


def docstring(fn) -> tuple[str, dict[str, str], str]:
    """(summary, {parameter: description}, returns) of a Google-style docstring, continuation lines joined."""
    text = inspect.getdoc(fn) or ""
    summary, params, returns = [], {}, []
    section, current, indent = "summary", None, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Parameters:", "Arguments:", "Returns:"):
            section, current, indent = ("returns" if stripped == "Returns:" else "args"), None, None
            continue
        if section == "summary":
            summary.append(stripped)
        elif section == "returns":
            returns.append(stripped)
        elif stripped:
            match = re.match(r"(\w+): (.*)", stripped)
            depth = len(line) - len(line.lstrip())
            if match and (indent is None or depth <= indent):  # a parameter starts at the section's indent
                current, indent = match.group(1), depth
                params[current] = match.group(2)
            elif current is not None:
                params[current] += " " + stripped
    return " ".join(filter(None, summary)), params, " ".join(filter(None, returns))


def handler_docs(demo) -> dict[str, tuple[str, dict[str, str], str]]:
    """api_name -> (summary, {parameter: description}, returns) from each handler's docstring."""
    return {fn.api_name: docstring(fn.fn) for fn in demo.fns.values() if fn.api_name and fn.fn is not None}


def api_markdown(demo) -> str:
    info = demo.get_api_info()
    docs = handler_docs(demo)
    lines = [GENERATED, "", API_INTRO.rstrip(), ""]
    for endpoint, spec in info["named_endpoints"].items():
        description, described, returns = docs.get(endpoint.lstrip("/"), ("", {}, ""))
        lines += [f"## `{endpoint}`", ""]
        if description:
            lines += [description, ""]
        lines += ["| parameter | type | default | meaning |", "|---|---|---|---|"]
        for p in spec["parameters"]:
            default = shown(p["parameter_default"]) if p["parameter_has_default"] else "required"
            meaning = described.get(p["parameter_name"]) or p.get("label") or ""
            lines.append(f"| `{p['parameter_name']}` | `{cell(p['python_type']['type'])}` | {default} | "
                         f"{cell(meaning)} |")
        lines += ["", f"Returns:{' ' + returns if returns else ''}", ""]
        for r in spec["returns"]:
            label = "" if unnamed(r.get("label")) else f"{r['label']}: "
            lines.append(f"- {one_line(label + r['component'])} (`{r['python_type']['type']}`)")
        lines.append("")
    hidden = sorted(fn.api_name for fn in demo.fns.values()
                    if fn.api_name and getattr(fn, "api_visibility", "public") == "undocumented")
    if hidden:
        lines += ["## The page's own helpers", "",
                  "These events serve the page (field visibility, random seeds, presets, the pose editor); they are "
                  "callable but undocumented, and may change with the page: " + ", ".join(f"`/{n}`" for n in hidden)
                  + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


def mcp_schema(demo) -> list[dict]:
    """The tools as /gradio_api/mcp/schema lists them."""
    from gradio.mcp import GradioMCPServer

    server = GradioMCPServer(demo)
    response = asyncio.run(server.get_complete_schema(types.SimpleNamespace(query_params={})))
    return json.loads(response.body)


def schema_type(prop: dict) -> str:
    """A JSON schema property in a few words."""
    if "Gradio File Input" in str(prop.get("format", "")):
        return "file (URL)"
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(schema_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"array of ({schema_type(prop.get('items', {}))})"
    if prop.get("type") == "object" and "properties" in prop:
        return f"object ({prop.get('title', '')}: {', '.join(prop['properties'])})"
    return str(prop.get("type", "any"))


def mcp_markdown(demo) -> str:
    lines = [GENERATED, "", MCP_INTRO.rstrip(), ""]
    for tool in mcp_schema(demo):
        schema = tool["inputSchema"]
        required = set(schema.get("required", ()))
        lines += [f"## `{tool['name']}`", "", f"Endpoint `/{tool['meta']['endpoint_name']}`. "
                  + cell(tool["description"]), ""]
        properties = schema.get("properties", {})
        if properties:
            lines += ["| parameter | type | default | description |", "|---|---|---|---|"]
            for name, prop in properties.items():
                default = shown(prop["default"]) if "default" in prop else "optional"
                default = "required" if name in required else default
                lines.append(f"| `{name}` | {cell(schema_type(prop))} | {default} | "
                             f"{cell(prop.get('description', ''))} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render() -> dict[Path, str]:
    """{path: text} of the generated documents, from the app as it is now."""
    with documented_env():
        demo = build_app()
        try:
            return {API_MD: api_markdown(demo), MCP_MD: mcp_markdown(demo)}
        finally:
            demo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/api.md and docs/mcp.md from the app.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not current")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        print(f"{path.relative_to(ROOT)} {'is not current' if args.check else 'written'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
