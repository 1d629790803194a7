"""The documentation tells the truth about the code: README's methods table is the guider registry, the generated
API and MCP pages are what the app says now, and the README stays a front door."""

import re
from pathlib import Path

import pytest

from engine.guiders import GUIDERS, MODIFIERS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 150  # after the Space's front matter


def readme_body() -> str:
    text = README.read_text()
    return text[4:].split("\n---\n", 1)[1]


def cells(row: str) -> list[str]:
    """A Markdown table row's cells, with escaped pipes kept inside their cell."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def methods_table() -> dict[str, dict[str, str]]:
    """name -> {label, kind, paper} from the README's table under "## Guidance methods"."""
    section = readme_body().split("\n## Guidance methods\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = cells(rows[0])
    table = {}
    for row in rows[2:]:
        values = dict(zip(header, cells(row)))
        name = values["name"].strip("`")
        assert name not in table, f"README's methods table lists {name} twice"
        table[name] = values
    return table


def test_readme_methods_table_is_the_registry():
    table = methods_table()
    registered = {**GUIDERS, **MODIFIERS}
    assert set(table) == set(registered), (
        f"README's methods table lacks {sorted(set(registered) - set(table))} "
        f"and lists unregistered {sorted(set(table) - set(registered))}")
    for name, cls in registered.items():
        row = table[name]
        assert row["label"] == cls.label, name
        assert row["kind"] == ("modifier" if name in MODIFIERS else "method"), name
        assert row["paper"] == (cls.paper or "—"), name


def test_readme_is_a_front_door():
    body = readme_body()
    assert len(body.splitlines()) <= MAX_README_LINES
    for link in re.findall(r"\]\((docs/[^)#]+)", body):
        assert (ROOT / link).exists(), link
    picture = ROOT / "docs" / "compare.png"
    assert picture.stat().st_size < 400_000


def test_no_project_file_points_outside_the_project():
    outside = "../" + "shared"
    files = [ROOT / "app.py", README, *(ROOT / ".ci").iterdir()]
    for folder in ("engine", "ui", "world", "training", "evaluation", "benchmarks", "tools", "tests", "docs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".c", ".cpp", ".h")]
    for path in files:
        assert outside not in path.read_text(errors="ignore"), path.relative_to(ROOT)


@pytest.fixture(scope="module")
def generated():
    from tools.api_docs import render

    return render()


@pytest.mark.parametrize("name", ["api.md", "mcp.md"])
def test_generated_docs_are_current(generated, name):
    path = ROOT / "docs" / name
    assert path.read_text() == generated[path], f"docs/{name} is not current: run python -m tools.api_docs"


def test_generated_docs_cover_every_endpoint_and_tool(generated):
    api, mcp = generated[ROOT / "docs" / "api.md"], generated[ROOT / "docs" / "mcp.md"]
    for endpoint in ("/text2img", "/class_cond", "/controlnet", "/compare"):
        assert f"## `{endpoint}`" in api
    for tool in ("text2img", "class_cond", "controlnet", "compare_grid"):
        assert f"## `{tool}`" in mcp
    assert "| `scale` | `float` | `5.0` |" in api  # name, type and default, as the app declares them
