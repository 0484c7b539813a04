"""Shared pytest fixtures."""
# First: from the repository root, importing codesign keeps kernels/, cost_models/,
# search_spaces/ and configs/ to their installed names (codesign/__init__.py), before anything
# (transformers) imports a top-level `kernels`.
import codesign  # noqa: F401  isort: skip

import pytest
import torch

from tests.install_helpers import bare_project_modules


@pytest.fixture(scope="session", autouse=True)
def no_bare_project_modules():
    """After the whole session: none of the folders was imported under a bare name as well."""
    yield
    assert bare_project_modules() == []


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads that spin-wait for each
    other can run an order of magnitude slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory):
    """CODESIGN_CACHE_DIR set to a fresh directory for one test module: what its tests train
    (supernets, models) is shared between them and never lands in the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CODESIGN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture
def no_ray_left(monkeypatch):
    """The test leaves Ray shut down, whatever happened (use with ``usefixtures``)."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    yield
    if ray.is_initialized():
        ray.shutdown()
