"""The `parameters` PNG text chunk in AUTOMATIC1111's format, and its reader."""

from __future__ import annotations

import re

from PIL import Image, PngImagePlugin


def _quote(value) -> str:
    text = str(value)
    return f'"{text}"' if ("," in text or ":" in text or '"' in text) and not text.startswith('"') else text


def format_parameters(prompt: str, negative_prompt: str, fields: dict) -> str:
    """Prompt line, `Negative prompt:` line, then `Key: value, ...` as AUTOMATIC1111 writes them."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


_FIELD = re.compile(r'\s*([\w \-/+*.]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Read a `parameters` chunk back: prompt, negative prompt and the settings line as a dict of strings."""
    lines = text.strip().split("\n")
    settings_line = lines[-1] if len(lines) > 1 or _FIELD.match(lines[-1]) else ""
    body = lines[:-1] if settings_line else lines
    negative = [line for line in body if line.startswith("Negative prompt:")]
    prompt = "\n".join(line for line in body if not line.startswith("Negative prompt:"))
    result = {"Prompt": prompt, "Negative prompt": negative[0][len("Negative prompt:"):].strip() if negative else ""}
    for key, value in _FIELD.findall(settings_line):
        result[key.strip()] = value[1:-1] if value.startswith('"') else value.strip()
    return result


def save_png(image: Image.Image, path, parameters: str) -> None:
    """Save a PNG carrying the `parameters` text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    image.save(path, pnginfo=info)
