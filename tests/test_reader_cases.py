"""The handed files of ../shared/cases/readers give the right values of their README (issue 20)."""
import json

import pytest

from conftest import SHARED
from eai.cli import main

CASES = SHARED / "cases" / "readers"


@pytest.fixture(scope="module")
def cases():
    if not (CASES / "README.md").is_file():
        pytest.skip("../shared/cases/readers not present")
    return CASES


def eai(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out) if "--json" in argv else out.out


def value(d, name):
    return d["descriptors"][name]["value"]


def test_baseline_reference_body(cases, capsys):
    d = eai(capsys, "features", cases / "00-baseline-mixamo.bvh", "--json")
    assert value(d, "travel_speed") == pytest.approx(1.00, abs=0.02)
    assert value(d, "hand_height") == pytest.approx(0.42, abs=0.01)
    assert value(d, "head_pitch") == pytest.approx(0, abs=1) and value(d, "trunk_lean") == pytest.approx(0, abs=1)


def test_a1_joint_names_with_spaces(cases, capsys, tmp_path):
    import numpy as np

    eai(capsys, "--units", "cm", "convert", cases / "min-A1-joint-name-with-space.bvh", tmp_path / "x.npz")
    z = np.load(tmp_path / "x.npz")
    assert list(z["joints"]) == ["Bip01 Pelvis", "Bip01 Spine"]
    np.testing.assert_allclose(z["positions"][:, 1], [[0, 1.10, 0], [0, 1.10, 0.05]], atol=1e-6)


def test_a2_one_more_motion_line(cases, capsys):
    assert eai(capsys, "info", cases / "min-A2-one-more-line-than-frames.bvh", "--json")["frames"] == 3


def test_b_cmu_units(cases, capsys):
    from eai.io import read_motion
    from eai.skeleton.registry import registry

    layout = cases / "13-cmu-layout.yaml"
    d = eai(capsys, "--units", "0.05644", "--layout-file", layout, "features", cases / "13-cmu-skeleton-cmu-units.bvh",
            "--json")
    assert value(d, "travel_speed") == pytest.approx(1.30, abs=0.03)
    registry().register_file(layout)
    m = read_motion(cases / "13-cmu-skeleton-cmu-units.bvh", units=0.05644)
    head, ankles = m.joints.index("Head"), [m.joints.index("LeftFoot"), m.joints.index("RightFoot")]
    assert m.positions[0, head, 1] - m.positions[0, ankles, 1].mean() == pytest.approx(1.27, abs=0.01)
    assert main(["--layout-file", str(layout), "features", str(cases / "13-cmu-skeleton-cmu-units.bvh")]) == 2
    assert "--units" in capsys.readouterr().err


@pytest.mark.parametrize("up", [None, "z"])
def test_c_z_up(cases, capsys, up):
    d = eai(capsys, *(["--up", up] if up else []), "features", cases / "14-z-up-skeleton.bvh", "--json")
    assert value(d, "travel_speed") == pytest.approx(1.00, abs=0.02)
    assert value(d, "hand_height") == pytest.approx(0.42, abs=0.01)
    assert value(d, "trunk_lean") == pytest.approx(0, abs=1)


@pytest.mark.parametrize("name", ["15-kinect2csv-two-header-rows-trailing-semicolon.csv",
                                  "15c-kinect-trailing-semicolon-no-header.csv", "18c-kinect-reference-no-gaps.csv"])
def test_d_kinect_recorder_text(cases, capsys, name):
    info = eai(capsys, "info", cases / name, "--json")
    assert (info["frames"], info["joints"], info["fps"]) == (60, 25, 30)
    assert value(eai(capsys, "features", cases / name, "--json"), "travel_speed") == pytest.approx(0.50, abs=0.02)


def test_e_ms_timestamps(cases, capsys):
    assert eai(capsys, "info", cases / "min-E-ms-timestamps.csv", "--json")["fps"] == pytest.approx(30, abs=0.01)


def test_f_untracked_zero_frames(cases, capsys):
    d = eai(capsys, "features", cases / "18-kinect-untracked-frames-zeros.csv", "--json")
    assert value(d, "travel_speed") == pytest.approx(0.50, abs=0.03)
    assert eai(capsys, "info", cases / "18-kinect-untracked-frames-zeros.csv", "--json")["filled_frames"] == 5


def test_g_npz_bytes_names(cases, capsys):
    assert eai(capsys, "info", cases / "20-npz-joint-names-bytes.npz", "--json")["layout"] == "kinect25"


def test_h_pyskl_annotation_with_no_person(cases, capsys):
    assert main(["--trust-pickle", "info", str(cases / "23-pyskl-annotation-with-no-person.pkl")]) == 2
    err = capsys.readouterr().err
    assert "annotation 1" in err and "no person" in err and err.count("\n") == 1


def test_i_colon_namespace_names(cases, capsys):
    info = eai(capsys, "info", cases / "08-colon-namespace-names.bvh", "--json")
    assert info["layout"] == "mixamo" and info["unmatched_joints"] == []
