"""Summary numbers against the paper, Keras-measured MACs/params against the analytic ones, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lps_keras.arch import Arch
from lps_keras.model import build_model
from lps_keras.presets import PRESETS, get_preset
from lps_keras.summary import count_macs, parse_size, summarize, training_num_params

REPO = Path(__file__).resolve().parents[1]

# Paper (Zhang et al. 2022): GFLOPs column at 1024x2048 (conv MACs), and the official deploy models' params.
PAPER = {
    "lps_tiny": (0.063, 16_091),
    "lps_s": (10.421, 3_371_075),
    "lps_m": (17.718, 3_371_075),
    "lps_l": (43.808, 9_152_291),
}
SMALL = [
    Arch((1, 2, 1, 2, 1), (4, 6, 8, 10, 12), (0.75,), num_classes=5),
    Arch((1, 2, 2, 1, 2), (4, 6, 8, 8, 8), (1.0, 0.25), num_classes=3),
    Arch((1, 1, 2, 2, 1), (4, 4, 8, 8, 12), (1.0, 0.5, 0.25), num_classes=4),
]


def run_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "lps_keras.summary", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_numbers(name):
    gmacs, params = PAPER[name]
    s = summarize(get_preset(name), 1024, 2048, build=False)
    assert s["params_deploy"] == params
    assert round(s["gmacs"], 3) == gmacs


def test_table4_anchor_params():
    assert summarize(PRESETS["table4_step09"], build=False)["params_deploy"] == 5_961_059
    assert summarize(PRESETS["table4_step14"], build=False)["params_deploy"] == 17_994_515


@pytest.mark.parametrize("arch", SMALL, ids=["1path", "2path", "3path"])
def test_count_macs_matches_arch_on_odd_input(arch):
    deploy = build_model(arch, deploy=True)
    assert count_macs(deploy, (37, 53)) == arch.macs(37, 53)
    assert count_macs(deploy, (64, 96, 3)) == arch.macs(64, 96)


def test_count_macs_training_form_adds_the_1x1_branches():
    arch = SMALL[1]
    train = build_model(arch, deploy=False)
    extra = 0
    for p in range(arch.num_paths):
        c_in = 3
        for (h, w), d, c in zip(arch.feature_sizes(40, 40, p), arch.depth, arch.width):
            extra += h * w * (c_in * c + (d - 1) * c * c)
            c_in = c
    assert count_macs(train, (40, 40)) == arch.macs(40, 40) + extra


def test_count_macs_fixed_size_model():
    arch = SMALL[0]
    model = build_model(arch, deploy=True, input_shape=(33, 47, 3))
    assert count_macs(model, (33, 47)) == arch.macs(33, 47)


@pytest.mark.parametrize("arch", SMALL + [get_preset("lps_tiny")], ids=["1path", "2path", "3path", "tiny"])
def test_params_match_keras(arch):
    deploy = build_model(arch, deploy=True)
    assert deploy.count_params() == arch.num_params()
    train = build_model(arch, deploy=False)
    counts = training_num_params(arch)
    trainable = sum(int(v.numpy().size) for v in train.trainable_weights)
    non_trainable = sum(int(v.numpy().size) for v in train.non_trainable_weights)
    assert (trainable, non_trainable) == (counts["trainable"], counts["bn_statistics"])


def test_summary_sizes():
    s = summarize(get_preset("lps_s"), 1024, 2048, build=False)
    assert s["output_size"] == [48, 96]
    assert [p["input"] for p in s["paths"]] == [(768, 1536), (256, 512)]
    assert s["paths"][1]["stages"][-1] == (16, 32)
    assert summarize(get_preset("lps_tiny"), build=False)["output_size"] == [32, 64]
    assert summarize(get_preset("lps_l"), build=False)["output_size"] == [64, 128]


def test_parse_size():
    assert parse_size("1024x2048") == (1024, 2048)
    assert parse_size("37X53") == (37, 53)
    for bad in ("1024", "0x5", "axb", "10x-3"):
        with pytest.raises(Exception, match="HEIGHTxWIDTH"):
            parse_size(bad)


def test_cli_preset():
    r = run_cli("--preset", "lps_tiny")
    assert r.returncode == 0, r.stderr
    assert "16,091" in r.stdout and "0.063" in r.stdout and "32x64" in r.stdout and "[matches]" in r.stdout


def test_cli_arch_json_and_num_classes():
    arch = '{"depth": [1,1,1,1,1], "width": [4,8,16,32,32], "resolution": ["1/2"]}'
    r = run_cli("--arch", arch, "--input-size", "512x1024", "--num-classes", "11", "--json", "--no-build")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    a = Arch((1,) * 5, (4, 8, 16, 32, 32), (0.5,), num_classes=11)
    assert s["params_deploy"] == a.num_params() and s["macs"] == a.macs(512, 1024)
    assert s["output_size"] == [16, 32]


def test_cli_all_lists_every_preset():
    r = run_cli("--all")
    assert r.returncode == 0, r.stderr
    for name in PRESETS:
        assert name in r.stdout
    assert "43.808" in r.stdout and "17,994,515" in r.stdout


def test_cli_all_shows_the_papers_latency_and_miou():
    r = run_cli("--all")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
    assert lines["preset"][-4:] == ["T4", "ms", "T4", "mIoU"]
    # Paper, Table 4: step 0 0.38 ms 24.1; step 5 1.80 ms 62.3; step 12 17.81 ms 73.0; step 14 31.18 ms 74.8.
    assert lines["table4_step00"][-2:] == ["0.38", "24.1"]
    assert lines["table4_step05"][-2:] == ["1.80", "62.3"]
    assert lines["table4_step12"][-2:] == ["17.81", "73.0"]
    assert lines["table4_step12"][4] == "11/8,1/4,0"
    assert lines["table4_step14"][-2:] == ["31.18", "74.8"]
    assert lines["lps_s"][-2:] == ["-", "-"]
    assert "GTX 1070Ti" in r.stdout

    r = run_cli("--all", "--json")
    rows = json.loads(r.stdout)
    assert rows["table4_step01"]["table4"] == {"step": 1, "op": "depth_s4-5", "k": 7, "latency_ms": 0.49,
                                               "miou": 41.4, "name": None}
    assert "table4" not in rows["lps_l"]


def test_cli_preset_reports_the_table4_row():
    r = run_cli("--preset", "table4_step07", "--no-build")
    assert r.returncode == 0, r.stderr
    assert "step 7 (res_path1 x1, LPS-Net-S): 3.37 ms" in r.stdout and "66.1 mIoU" in r.stdout
    assert "paper Table 4" not in run_cli("--preset", "lps_s", "--no-build").stdout


@pytest.mark.parametrize("ratios, out", [((1.375, 0.25), (3, 5)), ((1.125,), (3, 4))], ids=["11/8", "9/8"])
def test_ratios_above_one_build_and_match(ratios, out):
    # Table 4 steps 11-14 enlarge path 1's input: 32x48 at 11/8 is 44x66 -> 22x33 -> 11x17 -> 6x9 -> 3x5.
    arch = Arch((1, 2, 1, 2, 1), (4, 6, 8, 8, 8), ratios, num_classes=3)
    assert arch.output_size(32, 48) == out
    for deploy in (True, False):
        model = build_model(arch, deploy=deploy)
        assert tuple(model(np.zeros((1, 32, 48, 3), "float32")).shape) == (1, *out, 3)
        assert model.arch == arch
    deploy_model = build_model(arch, deploy=True)
    assert deploy_model.count_params() == arch.num_params()
    assert count_macs(deploy_model, (32, 48)) == arch.macs(32, 48)
    up = build_model(arch, deploy=True, upsample_logits=True)
    assert tuple(up(np.zeros((1, 32, 48, 3), "float32")).shape) == (1, 32, 48, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "lps_xl"], "unknown preset 'lps_xl'"),
        (["--preset", "lps_s", "--input-size", "1024by2048"], "HEIGHTxWIDTH"),
        (["--arch", "{not json"], "invalid JSON"),
        (["--arch", '{"depth": [1,1,1,1,1], "width": [4,8,16,32,-1], "resolution": [1]}'], "width[4]"),
        (["--preset", "lps_s", "--num-classes", "1"], "--num-classes must be >= 2"),
        (["--preset", "lps_s", "--all"], "not allowed with"),
    ],
)
def test_cli_errors(args, message):
    r = run_cli(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "--input-size" in r.stdout and "examples:" in r.stdout


def test_every_family_preset_through_the_cli(capsys):
    """``python -m lps_keras.summary --preset <name>`` for every NDNet and MRMS preset (issue 25), against the
    NDNet authors' parameter counts and the HMSeg paper's (within 10 %)."""
    from lps_keras.families import FAMILIES
    from lps_keras.summary import main

    authors = {"ndnet29": 521_411, "ndnet45": 399_947, "ndnet61": 307_475}  # FCN32, 19 classes (their code)
    paper = {"mrms": (2.1e6, 7.3), "tinymrms": (0.6e6, 2.8)}  # params, GFLOPs (read as GMACs) at 768x1536
    names = [p for f in ("ndnet", "mrms") for p in FAMILIES[f].presets]
    assert {"ndnet29", "ndnet45", "ndnet61", "ndnet29_wide", "ndnet45_ende", "mrms", "tinymrms"} <= set(names)
    assert any(n.endswith("_e2") for n in names)
    for name in names:
        size = ["--input-size", "768x1536"] if name in paper else []
        assert main(["--preset", name, "--json", "--no-build", *size]) == 0, name
        s = json.loads(capsys.readouterr().out)
        assert s["params"] > 0 and s["gmacs"] > 0 and s["output_stride"] in (8, 16, 32), name
        if name in authors:
            assert s["params"] == authors[name]
        if name in paper:
            assert s["params"] == pytest.approx(paper[name][0], rel=0.10)
            assert s["gmacs"] == pytest.approx(paper[name][1], rel=0.10)
    # the Keras model agrees with the analytic counts (one preset built: the cross-check runs)
    assert main(["--preset", "ndnet45", "--input-size", "64x64"]) == 0
    assert "ndnet45 (ndnet)" in capsys.readouterr().out
