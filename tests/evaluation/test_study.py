"""`python -m evaluation.study`: its files and columns, its one-sentence errors, the same cells from two processes,
the matching (the engine's interpolation, refined where it is measured), the tables, and matched adherence on the
project's model."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cli
from engine.guiders import GUIDERS, GuidanceSettings
from evaluation import study
from world import HELD_OUT, parse_caption

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ARGS = ["--methods", "cfg,perp-cfg", "--scales", "1,5", "--seeds", "2", "--steps", "2"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("a red circle on the left\n\na blue square at the top\n")
    return path


@pytest.fixture(scope="module")
def one_process(tiny_folders, prompts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "one"
    assert study.main(["--model", str(tiny_folders["sd"]), *ARGS, "--prompts", str(prompts), "--out", str(out)]) == 0
    return out


def test_the_study_writes_its_four_files_with_their_columns(one_process):
    cells = _rows(one_process / "cells.csv")
    assert list(cells[0]) == list(study.CELL_COLUMNS)
    assert len(cells) == 2 * 2 * 2 * 2  # methods x scales x prompts x seeds
    assert {(r["method"], r["scale"]) for r in cells} == {("cfg", "1"), ("cfg", "5"), ("perp-cfg", "1"),
                                                          ("perp-cfg", "5")}
    assert {r["params"] for r in cells if r["method"] == "perp-cfg"} == {"eta=0"}
    assert all(r["adherence"] == "" for r in cells)  # the tiny model draws 32 px: the world cannot judge it
    assert all(0 <= float(r["saturation"]) <= 1 and 0 <= float(r["clipped"]) <= 1 for r in cells)
    image = Image.open(one_process / cells[-1]["image"])
    assert "Guidance: perp-cfg" in image.text["parameters"] and "CFG scale: 5" in image.text["parameters"]
    # scale 1 is the conditional model alone for both, so both rows show one image
    plain = [r for r in cells if r["scale"] == "1" and r["seed"] == "0" and r["prompt"] == "a red circle on the left"]
    assert np.array_equal(*(np.asarray(Image.open(one_process / r["image"])) for r in plain))

    summary = _rows(one_process / "summary.csv")
    assert list(summary[0]) == study.stat_columns()
    assert [(r["method"], r["scale"], r["n"]) for r in summary] == [("cfg", "1", "4"), ("cfg", "5", "4"),
                                                                    ("perp-cfg", "1", "4"), ("perp-cfg", "5", "4")]
    for r in summary:
        for name in ("saturation", "clipped", "diversity"):
            assert float(r[f"{name}_low"]) <= float(r[name]) <= float(r[f"{name}_high"])
        assert float(r["diversity"]) > 0  # two seeds of one prompt differ
    assert Image.open(one_process / "grid.png").size[0] > 2 * 128
    assert Image.open(one_process / "plots.png").size[0] > 400


@pytest.mark.parametrize("methods, sentence", [
    ("cfg,perp-cgf", "Unknown guidance 'perp-cgf'; choose one of none, cfg, perp-cfg"),
    ("apg:etta=0", "The guidance 'apg' takes no parameter 'etta'; it takes: eta, momentum"),
    ("apg:eta=2", "The guidance eta must lie between 0 and 1; 2 does not."),
    ("apg:eta=x", "The guidance eta in 'apg:eta=x' must be a number, not 'x'."),
    ("cfg,cfg", "The methods 'cfg' and 'cfg' are the same run; list it once."),
])
def test_a_bad_method_or_parameter_is_one_sentence(tiny_folders, tmp_path, capsys, methods, sentence):
    code = study.main(["--model", str(tiny_folders["sd"]), "--methods", methods, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and sentence in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_methods_and_parameters_take_dashes_or_underscores():
    method = study.parse_method("perp_cfg:eta=0.5")
    assert (method.name, method.params, method.label) == ("perp-cfg", "eta=0.5", "perp-cfg:eta=0.5")
    apg = study.parse_method("apg:eta=0:momentum=-0.5:norm-threshold=5")
    assert apg.settings["momentum"] == -0.5 and apg.settings["norm_threshold"] == 5
    assert study.parse_method("cfg:interval=0.2-0.8").settings["interval"] == (0.2, 0.8)
    text = next(((m, p) for m in GUIDERS for p in GuidanceSettings.declared_for(m) if p.kind == "text"), None)
    if text:  # a comma inside a text value (layer lists) stays in it
        method, param = text
        listed = study.parse_methods(f"cfg,{method}:{param.name}={param.default},{param.default},perp-cfg")
        assert [m.name for m in listed] == ["cfg", method, "perp-cfg"]


def test_bad_prompts_and_matching_without_an_evaluator_are_one_sentence(tiny_folders, prompts, tmp_path, capsys):
    assert study.main(["--model", str(tiny_folders["sd"]), "--prompts", str(tmp_path / "no.txt"),
                     "--out", str(tmp_path)]) == 2
    assert "The prompts file" in capsys.readouterr().err
    assert study.main(["--model", str(tiny_folders["sd"]), *ARGS, "--prompts", str(prompts),
                     "--match-adherence", "5", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.splitlines()  # after the model loader's progress
    assert err[-1].startswith("error: Matching needs adherence") and sum("error" in line for line in err) == 1
    assert not (tmp_path / "m").exists()  # refused before any image is generated


def test_the_default_prompts_are_the_worlds_held_out_captions():
    captions = study.held_out_captions()
    assert len(captions) == len(HELD_OUT)
    parsed = {(o.colour, o.shape, o.position) for c in captions for o in parse_caption(c).objects}
    assert parsed == set(HELD_OUT)


def test_two_processes_give_the_same_cells(tiny_folders, prompts, one_process, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # accelerate's --cpu starts one process without an MPI hostfile; --multi_gpu runs N CPU processes on a CPU
    done = subprocess.run([str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "29517", "-m", "evaluation.study", "--model", str(tiny_folders["sd"]),
                           *ARGS, "--prompts", str(prompts), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 processes" in done.stdout
    two, one = _rows(out / "cells.csv"), _rows(one_process / "cells.csv")
    same = ("method", "params", "scale", "prompt", "seed", "adherence", "image")
    assert [[r[c] for c in same] for r in two] == [[r[c] for c in same] for r in one]
    # one process has two threads, each of two has one: the CPU's kernels may sum in another order, within one
    # level out of 255 in a few pixels
    for a, b in zip(two, one):
        assert abs(float(a["saturation"]) - float(b["saturation"])) < 1e-3
        assert abs(float(a["clipped"]) - float(b["clipped"])) < 1e-3


def test_the_matching_interpolates_then_refines_where_it_measures():
    # adherence rises to 0.9 at scale 8, then falls (breakdown); the target 0.42 is first reached at 4.7
    def curve(s):
        return min(0.9, 0.1 * (s - 0.5)) if s <= 8 else max(0.0, 0.9 - 0.2 * (s - 8))

    probes = []
    sweep = {s: curve(s) for s in (1.0, 5.0, 10.0)}
    scale, known = study.find_matched(lambda s: probes.append(s) or curve(s), sweep, 0.42, 1 / 64)
    assert probes == [4.7] and scale == 4.7 and known[4.7] == pytest.approx(0.42)  # linear: one probe lands
    # a curve bent between the sweep's scales: the first interpolation misses, the next ones close in
    bent = lambda s: 1 - np.exp(-s / 4)  # noqa: E731
    probes.clear()
    scale, known = study.find_matched(lambda s: probes.append(s) or bent(s), {s: bent(s) for s in (1, 3, 15)},
                                      0.8, 0.01)
    assert len(probes) >= 2 and abs(bent(scale) - 0.8) <= 0.01 and all(1 <= s <= 15 for s in probes)
    assert study.find_matched(lambda s: 0.0, {1.0: 0.0, 5.0: 0.1}, 0.5, 0.01) == (None, {1.0: 0.0, 5.0: 0.1})


def test_paired_differences_from_the_reference_take_the_same_prompt_and_seed():
    ref = [{"prompt": p, "seed": k, "adherence": 1.0, "saturation": 0.2, "clipped": 0.0} for p in "ab" for k in (0, 1)]
    rows = [{**r, "saturation": 0.1, "adherence": None} for r in reversed(ref)]
    diff = study.paired_to(ref, rows)
    assert diff["saturation_diff"] == pytest.approx(-0.1)
    assert diff["saturation_diff_low"] == pytest.approx(-0.1) == diff["saturation_diff_high"]
    assert diff["adherence_diff"] is None and diff["clipped_diff"] == 0.0


def test_the_engine_knows_nothing_of_the_study(capsys):
    assert cli.main(["study", "--out", "x"]) == 2
    assert "invalid choice: 'study'" in capsys.readouterr().err
    lines = [line for path in (ROOT / "engine").rglob("*.py") for line in path.read_text().splitlines()
             if re.match(r"\s*(from|import) (world|evaluation|training)\b", line)]
    assert lines == []


def test_the_command_has_help():
    done = subprocess.run([sys.executable, "-m", "evaluation.study", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "python -m evaluation.study" in done.stdout and "--match-adherence" in done.stdout


@pytest.mark.slow
def test_matched_adherence_on_the_project_model(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on the left\na small blue square at the top\n")
    out = tmp_path / "matched"
    assert study.main(["--methods", "cfg,perp-cfg", "--scales", "1,3,5,10", "--seeds", "4", "--steps", "10",
                       "--prompts", str(prompts), "--match-adherence", "5", "--out", str(out)]) == 0
    rows = _rows(out / "matched.csv")
    reference, perp = rows
    assert reference["method"] == "cfg" and reference["scale"] == "5"
    assert perp["method"] == "perp-cfg"
    if perp["scale"] == "":
        pytest.fail(f"Perp-CFG never matched CFG's adherence: {perp['note']}")
    one_sample = 1 / (2 * 4)
    assert abs(float(perp["adherence"]) - float(reference["adherence"])) <= one_sample + 1e-9, perp["note"]


def test_tables_quote_the_summary(tmp_path):
    from evaluation.study import write_tables

    (tmp_path / "summary.csv").write_text(
        "method,params,scale,n,adherence,adherence_low,adherence_high,saturation,saturation_low,saturation_high,"
        "clipped,clipped_low,clipped_high,diversity,diversity_low,diversity_high\n"
        "cfg,,1,64,0.5,0.4,0.6,0.1,0.05,0.15,0.001,0.0005,0.002,0.2,0.1,0.3\n"
        "cfg,,7.5,64,0.9,0.8,1,0.2,0.1,0.3,0.01,0.005,0.02,0.1,0.05,0.15\n")
    text = write_tables(tmp_path).read_text()
    assert "| method | s=1 | s=7.5 |" in text
    assert "| cfg | 0.50 [0.40, 0.60] | 0.90 [0.80, 1.00] |" in text
    assert "| cfg | 0.10 [0.05, 0.20] | 1.00 [0.50, 2.00] |" in text  # clipped, in percent
    assert "matched adherence" not in text

    row = {"method": "tcfg", "params": "", "scale": 7.15, "n": 64, "adherence": 1.0, "adherence_low": 0.944,
           "adherence_high": 1.0, "saturation": 0.16, "saturation_low": 0.13, "saturation_high": 0.21,
           "clipped": 0.0013, "clipped_low": 0.0006, "clipped_high": 0.0019, "diversity": 0.15,
           "diversity_low": 0.11, "diversity_high": 0.2, "adherence_diff": 0.0, "adherence_diff_low": -0.066,
           "adherence_diff_high": 0.066, "saturation_diff": -0.04, "saturation_diff_low": -0.06,
           "saturation_diff_high": -0.02, "clipped_diff": 0.0001, "clipped_diff_low": -0.0002,
           "clipped_diff_high": 0.0003, "note": "curve 3:0.9 7.15:1 7.5:1"}
    study.write_csv(tmp_path / "matched.csv", [row, {"method": "apg", "params": "momentum=-0.5", "scale": None,
                                                     "note": "never reaches 1.000 within the scales"}],
                    study.matched_columns())
    text = write_tables(tmp_path).read_text()
    assert "| tcfg | 7.15 | 1.00 [0.94, 1.00] | 0.16 [0.13, 0.21] | 0.13 [0.06, 0.19] | 0.15 [0.11, 0.20] |" in text
    assert "| apg (momentum=-0.5) | not reached | never reaches 1.000 within the scales | | | |" in text
    assert "| tcfg | 0.00 [-0.07, 0.07] | -0.04 [-0.06, -0.02] | 0.01 [-0.02, 0.03] |" in text
