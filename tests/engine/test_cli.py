"""The command line: images with PNG info, per-seed files, and one-sentence errors for bad input."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.request import command_for
from engine.request import Request
from engine.guiders import GuidanceSettings
from engine.pnginfo import parse_parameters


def run_cli(*args):
    return main([str(a) for a in args])


def test_generate_writes_png_with_parameters(tiny_folders, tmp_path):
    out = tmp_path / "x.png"
    assert run_cli("generate", "--model", tiny_folders["sd"], "--prompt", "a red circle", "--negative-prompt",
                   "blue", "--guidance", "apg", "--eta", "0.2", "--momentum", "-0.5", "--norm-threshold", "5",
                   "--scale", "6", "--steps", "3", "--seed", "4", "--out", out) == 0
    params = parse_parameters(Image.open(out).info["parameters"])
    assert params["Prompt"] == "a red circle" and params["Negative prompt"] == "blue"
    assert params["Steps"] == "3" and params["Sampler"] == "DDIM" and params["CFG scale"] == "6"
    assert params["Seed"] == "4" and params["Size"] == "32x32" and params["Guidance"] == "apg"
    assert params["APG momentum"] == "-0.5" and params["Guidance eta"] == "0.2"


def test_a_served_folder_name_reproduces_under_lab_model_dir(tiny_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_MODEL_DIR", str(tiny_folders["sd"].parent))
    out = tmp_path / "named.png"
    assert run_cli("generate", "--model", tiny_folders["sd"].name, "--prompt", "a dot", "--steps", "2", "--out", out) == 0
    assert parse_parameters(Image.open(out).info["parameters"])["Model"] == tiny_folders["sd"].name


def test_num_images_writes_one_file_per_seed_equal_to_single_runs(tiny_folders, tmp_path):
    common = ["--model", tiny_folders["sd"], "--prompt", "a red circle", "--steps", "3", "--scheduler", "euler-a"]
    assert run_cli("generate", *common, "--seed", "7", "--num-images", "3", "--out", tmp_path / "b.png") == 0
    for seed in (7, 8, 9):
        assert run_cli("generate", *common, "--seed", seed, "--out", tmp_path / f"s{seed}.png") == 0
        batch = np.asarray(Image.open(tmp_path / f"b-{seed}.png")).astype(int)
        single = np.asarray(Image.open(tmp_path / f"s{seed}.png")).astype(int)
        assert np.abs(batch - single).max() <= 1
        assert parse_parameters(Image.open(tmp_path / f"b-{seed}.png").info["parameters"])["Seed"] == str(seed)


def test_class_and_control_from_the_command_line(tiny_folders, tmp_path):
    assert run_cli("generate", "--model", tiny_folders["dit"], "--class", "triangle", "--steps", "3",
                   "--out", tmp_path / "c.png") == 0
    assert parse_parameters(Image.open(tmp_path / "c.png").info["parameters"])["Class"] == "triangle"
    picture = np.zeros((40, 40, 3), np.uint8)
    picture[10:30, 10:30] = 255
    Image.fromarray(picture).save(tmp_path / "pic.png")
    assert run_cli("generate", "--model", tiny_folders["sd"], "--prompt", "a red square", "--control",
                   tmp_path / "pic.png", "--control-type", "canny", "--controlnet", tiny_folders["controlnet"],
                   "--steps", "3", "--out", tmp_path / "k.png") == 0
    assert "ControlNet" in Image.open(tmp_path / "k.png").info["parameters"]


BAD = [
    (["--model", "no_such_model"], "Unknown model"),
    (["--scheduler", "nope"], "invalid choice"),
    (["--guidance", "nope"], "invalid choice"),
    (["--scale", "nan"], "finite"),
    (["--scale", "inf"], "finite"),
    (["--scale", "-1"], "between"),
    (["--steps", "0"], "Steps"),
    (["--steps", "1001"], "Steps"),
    (["--height", "30"], "multiple of 8"),
    (["--width", "-8"], "multiple of 8"),
    (["--seed", "1.5"], "whole number"),
    (["--control", "missing.png", "--control-type", "canny"], "does not exist"),
    (["--out", "/no/such/folder/x.png"], "does not exist"),
    (["--momentum", "-0.5"], "--momentum belongs to apg"),
    (["--guidance", "apg", "--momentum", "2"], "between -1 and 0"),
    (["--guidance", "cfg", "--interval", "0.8", "0.2"], "start before it ends"),
    (["--guidance", "cfg-zero-star", "--zero-init-steps", "x"], "whole number"),
    (["--control", "a.png", "--control-type", "pose", "--control", "b.png"], "one --control-type per --control"),
    (["--control", "a.png", "--control-type", "pose", "--control", "b.png", "--control-type", "scribble",
      "--control-scale", "1"], "Give --control-scale once per --control or not at all; got 1 for 2"),
    (["--control", "a.png", "--control-type", "pose"] * 4, "At most 3 controls"),
]


@pytest.mark.parametrize("extra,fragment", BAD)
def test_bad_input_is_one_sentence_without_traceback(tiny_folders, tmp_path, capsys, extra, fragment):
    args = ["generate", "--model", tiny_folders["sd"], "--prompt", "a red circle", "--steps", "2",
            "--out", tmp_path / "x.png"]
    # later flags win in argparse, so the bad value replaces the good one
    assert run_cli(*args, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.startswith("error: ") and "Traceback" not in err and "\n" not in err


def test_unreadable_control_image(tiny_folders, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert run_cli("generate", "--model", tiny_folders["sd"], "--prompt", "x", "--control", bad,
                   "--control-type", "canny", "--out", tmp_path / "x.png") == 2
    assert "could not be read" in capsys.readouterr().err


def test_module_entry_point_exits_nonzero_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "engine", "generate", "--prompt", "x", "--steps", "0",
                           "--model", "nonsense", "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error:")


def test_reproduce_command_round_trips():
    req = Request(model="lab-sd", prompt="a red circle, big", guidance=GuidanceSettings("perp-cfg", 7.5, eta=0.3),
                  seed=5, steps=20, scheduler="euler")
    command = command_for(req)
    assert "--prompt 'a red circle, big'" in command and "--guidance perp-cfg" in command
    assert "--eta 0.3" in command and "--scheduler euler" in command and "--seed 5" in command


@pytest.mark.parametrize("guidance", [GuidanceSettings("apg", 6.0, eta=0.2, momentum=-0.5, norm_threshold=3.0,
                                                       rescale=0.7, interval=(0.1, 0.9)),
                                      GuidanceSettings("cfg-zero-star", 3.0, zero_init_steps=2),
                                      GuidanceSettings("none", 1.0)])
def test_reproduce_command_parses_back_to_the_same_guidance(guidance):
    import shlex

    from engine.cli import build_parser, guidance_from_args

    command = command_for(Request(model="lab-sd", prompt="a red circle", guidance=guidance))
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert guidance_from_args(args, args.scale) == guidance


def stacked_maps(folder):
    """A scribble map and a pose-like map (lines on black), as files in `folder`."""
    from PIL import ImageDraw

    scribble = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(scribble).line([(4, 16), (28, 16)], fill="black", width=3)
    pose = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(pose).line([(16, 4), (16, 28)], fill=(255, 0, 0), width=2)
    scribble.save(folder / "scribble.png")
    pose.save(folder / "pose.png")
    return folder / "scribble.png", folder / "pose.png"


def test_repeated_control_flags_give_one_spec_each_matched_by_position(tmp_path):
    from engine.cli import build_parser, controls_from_args

    scribble, pose = stacked_maps(tmp_path)
    args = build_parser().parse_args(["generate", "--prompt", "x", "--width", "32", "--height", "32",
                                      "--control", str(scribble), "--control-type", "scribble", "--control", str(pose),
                                      "--control-type", "pose", "--controlnet", "auto", "--controlnet", "net-b",
                                      "--control-scale", "1", "--control-scale", "0.6", "--control-end", "0.9",
                                      "--control-end", "0.5", "--out", str(tmp_path / "x.png")])
    controls = controls_from_args(args, engine=None)  # both sides given: no model is asked for its size
    assert [(c.control_type, c.controlnet, c.scale, c.start, c.end) for c in controls] == [
        ("scribble", None, 1.0, 0.0, 0.9), ("pose", "net-b", 0.6, 0.0, 0.5)]
    assert all(c.image.size == (32, 32) for c in controls)


@pytest.mark.parametrize("knobs", [[(None, 1.0, 0.0, 1.0), (None, 1.0, 0.0, 1.0)],
                                   [(None, 1.0, 0.0, 1.0), ("net-b", 0.6, 0.2, 0.8), ("net-c", 1.5, 0.0, 0.5)]])
def test_reproduce_command_writes_every_control_and_parses_back(tmp_path, monkeypatch, knobs):
    import shlex

    from engine.cli import build_parser, controls_from_args
    from engine.request import ControlSpec

    image = Image.new("RGB", (32, 32), "white")
    image.paste((0, 0, 0), (4, 14, 28, 18))  # a stroke, so the CLI's preprocessing of each type finds one
    types = ["scribble", "pose", "canny"]
    controls = tuple(ControlSpec(image, types[n], *k) for n, k in enumerate(knobs))
    command = command_for(Request(model="lab-sd", prompt="a red circle", controls=controls, width=32, height=32))
    names = [f"control-{n + 1}.png" for n in range(len(controls))]
    assert [command.index(f"--control {name} ") for name in names] == sorted(command.index(f"--control {name} ")
                                                                             for name in names)
    monkeypatch.chdir(tmp_path)  # the maps saved under the names the command gives them
    for name in names:
        image.save(name)
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert args.control == names
    parsed = controls_from_args(args, engine=None)
    assert [(c.control_type, c.controlnet, c.scale, c.start, c.end) for c in parsed] == [
        (c.control_type, c.controlnet, c.scale, c.start, c.end) for c in controls]


def test_one_control_keeps_its_command():
    from engine.request import ControlSpec

    spec = ControlSpec(Image.new("RGB", (8, 8)), "canny", None, 0.5)
    command = command_for(Request(prompt="x", controls=(spec,)))
    assert "--control control.png --control-type canny --control-scale 0.5 --steps" in command
    assert "--controlnet" not in command


def test_stacked_controls_from_the_command_line(tiny_folders, tmp_path):
    scribble, pose = stacked_maps(tmp_path)
    assert run_cli("generate", "--model", tiny_folders["sd"], "--prompt", "a red square", "--control", scribble,
                   "--control-type", "scribble", "--control", pose, "--control-type", "pose", "--controlnet",
                   tiny_folders["controlnet"], "--controlnet", tiny_folders["controlnet2"], "--control-scale", "1",
                   "--control-scale", "0.6", "--steps", "2", "--out", tmp_path / "s.png") == 0
    params = parse_parameters(Image.open(tmp_path / "s.png").info["parameters"])
    assert params["ControlNet 1"] == f"scribble {tiny_folders['controlnet']}"
    assert params["ControlNet 2"] == f"pose {tiny_folders['controlnet2']}"
    assert params["Control weight 1"] == "1" and params["Control weight 2"] == "0.6"
    assert params["Control range 2"] == "0-1"
