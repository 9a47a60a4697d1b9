"""Kinect CSV, NPZ and PYSKL readers; writers; every format gives the same Motion."""
import pickle

import numpy as np
import pytest

from eai.data.synth import express, generate
from eai.errors import FormatError, LayoutError
from eai.io import read_motion, write_motion
from eai.io.kinect import kinect_joints, read_kinect_csv
from eai.motion import Motion
from eai.skeleton.registry import registry


def kinect_motion(T=40):
    P = generate("happy", seconds=T / 30, seed=3)
    return express(P, registry().get("kinect25"), 30.0, "happy")


def test_kinect_csv_round_trip_with_header(tmp_path):
    m = kinect_motion()
    write_motion(m, tmp_path / "k.csv")
    back = read_motion(tmp_path / "k.csv")
    np.testing.assert_allclose(back.positions, m.positions, atol=1e-5)
    assert back.fps == pytest.approx(30.0, rel=1e-3) and back.joints == m.joints


@pytest.mark.parametrize("with_time", [False, True])
def test_kinect_headerless_75_and_76_columns(tmp_path, with_time):
    m = kinect_motion(20)
    flat = m.positions.reshape(20, 75)
    if with_time:
        flat = np.column_stack([np.arange(20) / 15.0, flat])
    p = tmp_path / "k.txt"
    np.savetxt(p, flat, delimiter=" " if with_time else ",", fmt="%.6f")
    back = read_kinect_csv(p)
    np.testing.assert_allclose(back.positions, m.positions, atol=1e-5)
    assert back.fps == pytest.approx(15.0 if with_time else 30.0)
    assert back.joints[0] == "SpineBase" and len(back.joints) == 25


@pytest.mark.parametrize("text,match", [
    ("x,y,z\n1,2\n", "names no Kinect v2 joint"),
    ("1,2,3\n", "75"),
    (",".join(["1"] * 75) + "\n" + ",".join(["1"] * 74) + "\n", "expected 75"),
    (",".join(["1"] * 74 + ["nan"]) + "\n", "not finite"),
    (",".join(["1"] * 74 + ["z"]) + "\n", "not a number"),
])
def test_kinect_bad_input(tmp_path, text, match):
    p = tmp_path / "b.csv"
    p.write_text(text)
    with pytest.raises(FormatError, match=match):
        read_kinect_csv(p)


def test_npz_round_trip_and_parents_from_layout(tmp_path):
    m = kinect_motion()
    write_motion(m, tmp_path / "m.npz")
    back = read_motion(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.positions, m.positions)
    assert back.parents == m.parents and back.label == "happy"
    # a file with names but no parents gets the tree of its layout
    np.savez(tmp_path / "n.npz", positions=m.positions, joints=np.array(m.joints), fps=30.0)
    assert read_motion(tmp_path / "n.npz").parents == m.parents


def test_npz_bad_input(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(FormatError):
        read_motion(p)
    np.savez(p, positions=np.zeros((5, 3, 3)), joints=np.array(["foo", "bar", "baz"]), fps=30.0)
    with pytest.raises(LayoutError, match="match no known"):
        read_motion(p)
    np.savez(p, positions=np.zeros((0, 3, 3)), joints=np.array(["a", "b", "c"]), fps=30.0)
    with pytest.raises(FormatError, match="zero frames"):
        read_motion(p)
    np.savez(p, positions=np.zeros((5, 3)), joints=np.array(["a"]), fps=30.0)
    with pytest.raises(FormatError, match="T, J, 3"):
        read_motion(p)
    np.savez(p, positions=np.array([[["x"] * 3]] * 2, dtype=object), joints=np.array(["a"]), fps=30.0)
    with pytest.raises(FormatError):
        read_motion(p)


def test_pyskl_needs_trust(tmp_path):
    kp = kinect_motion(30).positions[None]
    p = tmp_path / "a.pkl"
    p.write_bytes(pickle.dumps({"annotations": [{"keypoint": kp, "label": 1, "frame_dir": "c1"}],
                                "label_names": ["sad", "happy"]}))
    with pytest.raises(FormatError, match="--trust-pickle"):
        read_motion(p)
    m = read_motion(p, trust_pickle=True)
    assert m.layout == "kinect25" and m.label == "happy" and m.positions.shape == (30, 25, 3)
    np.testing.assert_allclose(m.positions, kp[0])


def test_bvh_written_from_kinect_replays_positions(tmp_path):
    m = kinect_motion()
    m.parents = list(registry().get("kinect25").parents)
    write_motion(m, tmp_path / "k.bvh")
    back = read_motion(tmp_path / "k.bvh", units="m")
    idx = [back.joints.index(j) for j in m.joints]
    np.testing.assert_allclose(back.positions[:, idx], m.positions, atol=1e-5)


def test_unknown_extension(tmp_path):
    p = tmp_path / "a.fbx"
    p.write_text("x")
    with pytest.raises(FormatError, match="unknown motion format"):
        read_motion(p)
    with pytest.raises(FormatError, match="cannot write"):
        write_motion(Motion(np.zeros((1, 1, 3)), ["a"], [-1], 30.0), tmp_path / "a.fbx")


def test_kinect_joint_order_is_the_sdk_order():
    names, _ = kinect_joints()
    assert names[:4] == ["SpineBase", "SpineMid", "Neck", "Head"] and names[20] == "SpineShoulder"
    assert names[-1] == "ThumbRight"
