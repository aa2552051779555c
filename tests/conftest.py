from __future__ import annotations

import os

# one thread per process: the tests are small, and Qt, dask and subprocesses share the cores (two threads made
# the default suite slower on the 2-core machines, not faster); a value set by the user is kept
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(autouse=True)
def _own_prefs(tmp_path, monkeypatch):
    """Widgets remember choices in a preferences file: each test gets its own, never the user's."""
    monkeypatch.setenv("NAPARI_DERUN_CONFIG_DIR", str(tmp_path / "napari-derun-config"))


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (bitwise reproducible reductions; no oversubscription
    next to Qt or worker threads), restoring the previous count afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real image pairs) is not present")
    return SHARED_DATA
