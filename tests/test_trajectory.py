"""lps_keras.train.trajectory: a resumed run must share its backup's trajectory settings."""

import json
from pathlib import Path

import pytest

from lps_keras.recipe import load_recipe
from lps_keras.train.errors import TrainingError
from lps_keras.train.trajectory import check_backup_trajectory, trajectory_record

REPO = Path(__file__).resolve().parents[1]


def _recipe(*extra):
    return load_recipe(REPO / "recipes" / "demo.json", list(extra))


def _record(tmp_path, recipe, task="train"):
    path = tmp_path / "trajectory.json"
    path.write_text(json.dumps(trajectory_record(recipe, task)))
    return path


def test_a_rerun_with_another_seed_or_optimiser_is_refused_naming_the_fields(tmp_path):
    record = _record(tmp_path, _recipe())
    train = json.loads(record.read_text())["train"]
    assert train["seed"] == 0 and "iterations" not in train and train["init_sha256"] is None
    with pytest.raises(TrainingError, match=r"\(train\.seed 0 -> 1\).*another --run-dir, or --no-resume"):
        check_backup_trajectory(record, _recipe("train.seed=1"), tmp_path)
    with pytest.raises(TrainingError, match=r"\(data\.augment\.hflip True -> False; train\.base_lr 0\.05 -> 0\.1\)"):
        check_backup_trajectory(record, _recipe("train.base_lr=0.1", "data.augment.hflip=false"), tmp_path)


def test_length_intervals_data_root_and_unused_fields_may_change(tmp_path):
    record = _record(tmp_path, _recipe())  # demo: cross-entropy, no class balance
    check_backup_trajectory(record, _recipe("train.iterations=9999", "train.val_interval=7", "data.root=/elsewhere",
                                            "train.ohem_threshold=0.5", "train.enet_c=1.5",
                                            "pretrain.image_size=[64,64]"), tmp_path)
    ohem = _record(tmp_path, _recipe("train.loss=ohem"))
    with pytest.raises(TrainingError, match=r"train\.ohem_threshold 0\.7 -> 0\.5"):
        check_backup_trajectory(ohem, _recipe("train.loss=ohem", "train.ohem_threshold=0.5"), tmp_path)


def test_pretraining_ignores_the_segmentation_augmentation_but_not_its_own_crop(tmp_path):
    record = _record(tmp_path, _recipe(), task="pretrain")
    check_backup_trajectory(record, _recipe("data.augment.hflip=false", "train.loss=ohem"), tmp_path, task="pretrain")
    with pytest.raises(TrainingError, match=r"pretrain\.image_size \[224, 224\] -> \[64, 64\]"):
        check_backup_trajectory(record, _recipe("pretrain.image_size=[64,64]"), tmp_path, task="pretrain")


def test_the_start_weights_are_compared_by_content_not_path(tmp_path):
    weights = tmp_path / "w.keras"
    weights.write_bytes(b"weights one")
    record = _record(tmp_path, _recipe(f"train.init={weights}"))
    copy = tmp_path / "sub" / "copy.keras"
    copy.parent.mkdir()
    copy.write_bytes(b"weights one")
    check_backup_trajectory(record, _recipe(f"train.init={copy}"), tmp_path)  # same bytes, other path
    weights.unlink()
    check_backup_trajectory(record, _recipe(f"train.init={weights}"), tmp_path)  # gone: nothing to compare
    with pytest.raises(TrainingError, match=r"train\.init a file of SHA-256 [0-9a-f]{16} -> from scratch"):
        check_backup_trajectory(record, _recipe(), tmp_path)
    scratch = _record(tmp_path, _recipe())
    with pytest.raises(TrainingError, match=r"train\.init from scratch -> .*copy\.keras \(SHA-256"):
        check_backup_trajectory(scratch, _recipe(f"train.init={copy}"), tmp_path)


def test_a_backup_without_a_record_is_not_checked(tmp_path):
    record = tmp_path / "trajectory.json"
    check_backup_trajectory(record, _recipe("train.seed=1"), tmp_path)  # missing
    record.write_text("{not json")
    check_backup_trajectory(record, _recipe("train.seed=1"), tmp_path)


def test_the_precision_is_compared_as_the_policy_it_resolved_to(tmp_path):
    path = tmp_path / "trajectory.json"
    path.write_text(json.dumps(trajectory_record(_recipe("train.mixed_precision=auto"), policy="mixed_bfloat16")))
    assert json.loads(path.read_text())["train"]["dtype_policy"] == "mixed_bfloat16"
    # "auto" on a CPU without bf16 hardware is float32: resuming there would switch the run's precision
    with pytest.raises(TrainingError, match=r"train\.dtype_policy 'mixed_bfloat16' -> 'float32'"):
        check_backup_trajectory(path, _recipe("train.mixed_precision=auto"), tmp_path, policy="float32")
    # "auto" that resolved to float32 and an explicit "none" are the same run
    path.write_text(json.dumps(trajectory_record(_recipe("train.mixed_precision=auto"), policy="float32")))
    check_backup_trajectory(path, _recipe("train.mixed_precision=none"), tmp_path, policy="float32")
    # a record written before the policy was recorded holds the setting only: "auto" cannot be compared (it
    # depended on that machine), an explicit setting can
    old = trajectory_record(_recipe())
    del old["train"]["dtype_policy"]
    old["train"]["mixed_precision"] = "auto"
    path.write_text(json.dumps(old))
    check_backup_trajectory(path, _recipe("train.mixed_precision=none"), tmp_path, policy="float32")
    old["train"]["mixed_precision"] = "mixed_bfloat16"
    path.write_text(json.dumps(old))
    check_backup_trajectory(path, _recipe("train.mixed_precision=auto"), tmp_path, policy="mixed_bfloat16")
    with pytest.raises(TrainingError, match=r"train\.mixed_precision 'mixed_bfloat16' -> dtype policy 'float32'"):
        check_backup_trajectory(path, _recipe("train.mixed_precision=none"), tmp_path, policy="float32")


def test_the_step_schedule_is_part_of_the_trajectory_and_poly_records_keep_their_old_form(tmp_path):
    # a poly run records no step fields: backups written before train.lr_schedule existed still resume
    poly = json.loads(_record(tmp_path, _recipe()).read_text())["train"]
    assert "lr_schedule" not in poly and "lr_steps" not in poly and poly["poly_power"] == 0.9
    step = ["train.lr_schedule=step", "train.lr_steps=[100,200]", "train.lr_step_factors=[0.1,0.01]"]
    record = _record(tmp_path, _recipe(*step))
    assert "poly_power" not in json.loads(record.read_text())["train"]
    with pytest.raises(TrainingError, match=r"train\.lr_steps \[100, 200\] -> \[100, 300\]"):
        check_backup_trajectory(record, _recipe(*step[:1], "train.lr_steps=[100,300]", step[2]), tmp_path)
