"""The command line: outputs, JSON, and one-line errors with exit code 2."""
import json
import subprocess
import sys

import numpy as np
import pytest

from eai.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_json(capsys, synth_dir):
    f = sorted(synth_dir.glob("sad/*.bvh"))[0]
    code, out, _ = run(capsys, "info", str(f), "--json")
    info = json.loads(out)
    assert code == 0 and info["layout"] == "bandai22" and info["frames"] == 150
    assert info["canonical_missing"] == ["l_hand", "r_hand"]


def test_convert_every_way(capsys, synth_dir, tmp_path):
    f = sorted(synth_dir.glob("happy/*kinect25.csv"))[0]
    for ext in ("npz", "bvh", "csv"):
        code, _, err = run(capsys, "convert", str(f), str(tmp_path / f"o.{ext}"))
        assert code == 0, err
    from eai.io import read_motion

    a, b = read_motion(f), read_motion(tmp_path / "o.npz")
    np.testing.assert_array_equal(a.positions, b.positions)
    c = read_motion(tmp_path / "o.bvh", units="m")
    np.testing.assert_allclose(c.positions[:, [c.joints.index(j) for j in a.joints]], a.positions, atol=1e-5)


def test_features_and_data(capsys, synth_dir):
    f = sorted(synth_dir.glob("angry/*.npz"))[0]
    code, out, _ = run(capsys, "features", str(f), "--json")
    d = json.loads(out)["descriptors"]
    assert code == 0 and d["speed"]["unit"] == "m/s" and d["speed"]["value"] > 0
    code, out, _ = run(capsys, "data", str(synth_dir), "--json")
    d = json.loads(out)
    assert code == 0 and d["clips"] == 42 and d["labels"]["sad"]["clips"] == 6 and d["problems"] == []


def test_baseline_json_and_plot(capsys, synth_dir, tmp_path):
    code, out, err = run(capsys, "baseline", "--data", str(synth_dir), "--folds", "3", "--quiet",
                         "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "c.png"))
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    b = r["models"]["baseline"]
    assert r["folds"] == 3 and len(b["runs"]) == 3
    assert b["window_accuracy"] == pytest.approx(np.mean([f["window_accuracy"] for f in b["runs"]]))
    assert sum(map(sum, b["confusion"])) == r["windows"] and b["window_accuracy"] > 2 / 7  # chance: 1/7
    assert (tmp_path / "c-baseline.png").stat().st_size > 1000


BAD_INPUTS = {
    "garbage.bvh": b"\x00\x01garbage" * 100,
    "text.bvh": b"hello world\n",
    "bad.csv": b"x,y,z\n1,2\n",
    "garbage.npz": b"PK\x03\x04 not really",
    "empty.bvh": b"",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2(capsys, tmp_path, name):
    p = tmp_path / name
    p.write_bytes(BAD_INPUTS[name])
    code, out, err = run(capsys, "info", str(p))
    assert code == 2 and err.startswith("eai: error: ") and err.count("\n") == 1 and str(p) in err


def test_missing_file_and_bad_dataset(capsys, tmp_path):
    code, _, err = run(capsys, "info", str(tmp_path / "nope.bvh"))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "data", str(tmp_path))
    assert code == 2 and "no labelled clips" in err
    code, _, err = run(capsys, "convert", str(tmp_path / "a.bvh"), str(tmp_path / "a.bvh"))
    assert code == 2


def test_console_script_has_no_traceback(tmp_path):
    p = tmp_path / "x.bvh"
    p.write_text("HIERARCHY\nROOT a\n{\n OFFSET 0 0 0\n CHANNELS 3 Xposition Yposition\n}\n")
    r = subprocess.run([sys.executable, "-m", "eai.cli", "info", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and ":5:" in r.stderr


def test_synth_writes_dataset(capsys, tmp_path):
    code, out, _ = run(capsys, "synth", str(tmp_path / "s"), "--layouts", "smpl24,coco17", "--emotions",
                       "sad,happy", "--clips-per-label", "2", "--seconds", "2")
    assert code == 0 and len(list((tmp_path / "s").rglob("*.npz"))) == 4


def test_error_hints_name_options_that_exist(capsys, tmp_path):
    import re

    from eai.cli.main import build_parser

    f = tmp_path / "odd.npz"
    np.savez(f, positions=np.zeros((3, 2, 3), np.float32), joints=np.array(["foo", "bar"]), fps=30.0)
    code, _, err = run(capsys, "info", str(f))
    hints = re.findall(r"--[a-z][a-z-]*", err)
    assert code == 2 and hints, err
    assert set(hints) <= {o for a in build_parser()._actions for o in a.option_strings}, err
