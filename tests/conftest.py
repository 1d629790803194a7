"""Session fixtures: tiny seeded model folders, and the app launched in-process on them."""

import pytest

from engine.generate import Engine
from tests.tiny_models import save_all


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """Tiny seeded SD, ControlNet and DiT folders in the hub layout."""
    return save_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_root(tiny_folders):
    return tiny_folders["sd"].parent


@pytest.fixture(scope="session")
def lab_app(tiny_root):
    """(url, engine, demo) of the app serving every tab from the tiny model folders; closed after the session."""
    import os

    import app
    from ui.models import folder_choices

    os.environ.setdefault("LAB_MAX_WORK_S", "600")  # the tests' long runs are long on purpose; budget tests set it

    engine = Engine()
    demo = app.create_app(engine, folder_choices(tiny_root, steps=2))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
    yield url, engine, demo
    demo.close()


@pytest.fixture(scope="session")
def client(lab_app):
    from gradio_client import Client

    return Client(lab_app[0], verbose=False)
