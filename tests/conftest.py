"""Shared test setup: quiet TF, deterministic seeds, marker handling, shared-data location."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


def shared_data_dir() -> Path:
    """Where shared, pre-downloaded data lives: $LPS_SHARED_DATA or <repo>/../shared/data."""
    env = os.environ.get("LPS_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("LPS_RUN_SLOW") == "1"
    has_shared = shared_data_dir().is_dir()
    gpu = _has_gpu() if any("gpu" in item.keywords for item in items) else False
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: use --runslow or LPS_RUN_SLOW=1"))
        if "needs_shared_data" in item.keywords and not has_shared:
            item.add_marker(pytest.mark.skip(reason=f"shared data not found at {shared_data_dir()}"))
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="no GPU"))


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def shared_data():
    return shared_data_dir()
