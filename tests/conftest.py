import pytest

from tests.tiny_models import save_all


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """Tiny seeded SD, ControlNet and DiT folders in the hub layout."""
    return save_all(tmp_path_factory.mktemp("models"))
