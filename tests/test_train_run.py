"""TrainingRun: the run directory's lifetime (lock, dtype policy, cleanup) and the backup's config record."""

import json
from pathlib import Path

import keras
import pytest

from lps_keras.errors import BusyError
from lps_keras.recipe import load_recipe, recipe_from_dict
from lps_keras.train.errors import TrainingError
from lps_keras.train.run import TrainingRun, check_backup_config, config_record, epoch_steps_of

REPO = Path(__file__).resolve().parents[1]


def _recipe(run_dir, *extra):
    return load_recipe(REPO / "recipes" / "demo.json", [f"train.run_dir={run_dir}", *extra])


def test_a_failed_run_removes_the_directory_it_created_and_restores_the_policy(tmp_path):
    before = keras.config.dtype_policy().name
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with TrainingRun(_recipe(run_dir, "train.mixed_precision=mixed_bfloat16")) as run:
            assert run_dir.is_dir() and keras.config.dtype_policy().name == "mixed_bfloat16"
            with pytest.raises(BusyError):  # one process per run directory
                TrainingRun(_recipe(run_dir)).__enter__()
            raise RuntimeError("boom")
    assert not run_dir.exists()  # nothing to resume from: nothing left behind
    assert keras.config.dtype_policy().name == before
    with TrainingRun(_recipe(run_dir)) as run:  # the lock was released
        assert run.epoch_steps == epoch_steps_of(run.recipe)
    assert run_dir.is_dir()  # a run that ends normally keeps its directory


def test_a_directory_the_run_did_not_create_survives_a_failure(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        with TrainingRun(_recipe(run_dir)):
            raise KeyboardInterrupt
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_the_backup_records_its_config_and_refuses_another(tmp_path):
    lps = _recipe(tmp_path).model_config()
    ndnet = recipe_from_dict({"model": {"family": "ndnet", "preset": "ndnet45"}}).model_config()
    assert config_record(lps) == lps.to_dict()  # LPS-Net keeps the historical arch.json
    assert config_record(ndnet) == {"family": "ndnet", "config": ndnet.to_dict()}
    record = tmp_path / "arch.json"
    record.write_text(json.dumps(config_record(ndnet)))
    check_backup_config(record, ndnet, tmp_path)  # the same config: fine
    with pytest.raises(TrainingError, match=r"backup of architecture ndnet .* the recipe asks for \{"):
        check_backup_config(record, lps, tmp_path)
    other = recipe_from_dict({"model": {"family": "ndnet", "preset": "ndnet61"}}).model_config()
    with pytest.raises(TrainingError, match=r"--no-resume"):
        check_backup_config(record, other, tmp_path)
    record.write_text("{not json")
    check_backup_config(record, lps, tmp_path)  # unreadable: left to the restore's shape check
