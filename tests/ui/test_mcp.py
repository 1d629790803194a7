"""The lab as tools for agents: with the MCP server on, the generation endpoints are tools whose descriptions come
from their docstrings (every parameter explained), and the page's helper endpoints are not tools."""

import httpx
import pytest

from engine.generate import Engine

GENERATION = ("text2img", "class_cond", "controlnet", "compare_grid")  # tools are named after the functions
HELPERS = ("text2img_guidance_fields", "text2img_random_seed", "text2img_submit", "sketch_brush",
           "pose_from_editor", "pose_to_editor", "pose_editor_canvas", "tab_pose", "compare_preset", "_lambda_")


@pytest.fixture(scope="module")
def mcp_schema(tiny_root):
    import app
    from ui.models import folder_choices

    demo = app.create_app(Engine(), folder_choices(tiny_root, steps=2))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, mcp_server=True, **app.launch_options())
    try:
        response = httpx.get(url.rstrip("/") + "/gradio_api/mcp/schema", timeout=60)
        response.raise_for_status()
        yield {tool["name"]: tool for tool in response.json()}
    finally:
        demo.close()


def test_generation_endpoints_are_tools_and_helpers_are_not(mcp_schema):
    names = set(mcp_schema)
    for name in GENERATION:
        assert any(n.endswith(name) for n in names), (name, names)
    for name in HELPERS:
        assert not any(n.endswith(name) for n in names), (name, names)


def test_tool_descriptions_explain_the_parameters(mcp_schema):
    tool = next(t for n, t in mcp_schema.items() if n.endswith("text2img"))
    assert "Generate images from a text prompt" in tool["description"]
    properties = tool["inputSchema"]["properties"]
    assert "Guidance scale" in properties["scale"]["description"]
    assert "pag" in properties["guidance"]["description"]
    assert "PAG scale (0 to 50)" in properties["pag_scale"]["description"]


def test_no_parameter_description_is_cut_short(mcp_schema):
    for name, tool in mcp_schema.items():
        if any(name.endswith(n) for n in GENERATION):
            for parameter, schema in tool["inputSchema"]["properties"].items():
                assert schema["description"].endswith("."), (name, parameter, schema["description"])
    from engine.guiders.settings import compare_rows

    tool = next(t for n, t in mcp_schema.items() if n.endswith("compare_grid"))
    assert all(row in tool["inputSchema"]["properties"]["methods"]["description"] for row in compare_rows())
