"""The model card's sample grid: a row per prompt, a column per seed."""

from PIL import Image

from evaluation import samples


def test_the_grid_has_a_labelled_row_per_prompt_and_a_column_per_seed(lab_models, tmp_path, monkeypatch):
    monkeypatch.setattr(samples, "PROMPTS", samples.PROMPTS[:2])
    samples.grid(str(lab_models / "sd"), tmp_path / "grid.png", seeds=3, steps=1)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (330 + 3 * 64, 2 * 64)
