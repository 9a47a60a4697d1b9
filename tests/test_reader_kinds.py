"""Files the way recorders and exporters write them (issue 20, kinds A-I): each kind with its right value,
in more variants than the handed files in ../shared/cases/readers."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eai.cli import main
from eai.errors import EaiError, EaiWarning, FormatError, UnitError
from eai.io import read_motion, write_motion
from eai.io.body import _TURN, UpError
from eai.io.bvh import read_bvh
from eai.io.kinect import kinect_joints, read_kinect_csv
from eai.features import describe
from eai.motion import Motion
from eai.skeleton.registry import registry
from eai.skeleton.unify import unify
from eai.data.synth import express, generate

SRC = str(Path(__file__).resolve().parents[1] / "src")


def body(layout="kinect25", seconds=2.0, emotion="neutral"):
    """A generated walking body on a layout, y up, metres."""
    return express(generate(emotion, seconds=seconds, seed=5), registry().get(layout), 30.0, emotion)


def travel(m: Motion) -> float:
    u = unify(m)
    return describe(u.metres(), u.mask, u.fps)["travel_speed"]["value"]


# --- A. BVH the exporters write ---------------------------------------------------------------------------

SPACED = """HIERARCHY
ROOT Bip01 Pelvis
{{
\tOFFSET 0 100 0
\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
\tJOINT Bip01 L Thigh {{
\t\tOFFSET 10 0 0
\t\tCHANNELS 3 Zrotation Xrotation Yrotation
\t\tEnd Site
\t\t{{
\t\t\tOFFSET 0 -40 0
\t\t}}
\t}}
\tJOINT   Bip01   R  Thigh
\t{{
\t\tOFFSET -10 0 0
\t\tCHANNELS 3 Zrotation Xrotation Yrotation
\t\tEnd Site
\t\t{{
\t\t\tOFFSET 0 -40 0
\t\t}}
\t}}
}}
MOTION
Frames: {frames}
Frame Time: 0.04
{lines}"""


def spaced_bvh(tmp_path, frames: int, lines: int, cut: bool = False) -> Path:
    rows = [f"0 100 {2 * i} 0 0 0 0 0 0 0 0 0" for i in range(lines)]
    if cut:
        rows[-1] = rows[-1][:9]
    p = tmp_path / "spaced.bvh"
    p.write_text(SPACED.format(frames=frames, lines="\n".join(rows) + "\n"))
    return p


def test_bvh_joint_names_keep_their_spaces(tmp_path):
    m = read_bvh(spaced_bvh(tmp_path, 3, 3), units="cm")
    assert m.joints == ["Bip01 Pelvis", "Bip01 L Thigh", "Bip01 R Thigh"]  # runs of spaces fold to one
    assert m.parents == [-1, 0, 0]
    np.testing.assert_allclose(m.positions[2, 1], [0.10, 1.0, 0.04], atol=1e-6)


@pytest.mark.parametrize("extra", [1, 4])
def test_bvh_more_frame_lines_than_declared_are_read_with_a_warning(tmp_path, extra):
    with pytest.warns(EaiWarning, match=f"{extra} more frame line"):
        m = read_bvh(spaced_bvh(tmp_path, 3, 3 + extra), units="cm")
    assert m.n_frames == 3 + extra and m.positions[-1, 0, 2] == pytest.approx(0.02 * (2 + extra))
    assert any("more frame line" in n for n in m.meta["notes"])


def test_bvh_fewer_lines_or_a_cut_line_stay_errors(tmp_path):
    with pytest.raises(FormatError, match="only 2 are present"):
        read_bvh(spaced_bvh(tmp_path, 3, 2), units="cm")
    with pytest.raises(FormatError, match="frame has 4 values"):
        read_bvh(spaced_bvh(tmp_path, 3, 4, cut=True), units="cm")


# --- B. Length units --------------------------------------------------------------------------------------

def scaled_bvh(tmp_path, per_metre: float) -> Path:
    """A mixamo body written in a unit with `per_metre` file units per metre."""
    m = body("mixamo")
    m.positions = m.positions * per_metre
    p = tmp_path / "scaled.bvh"
    write_motion(m, p)
    return p


@pytest.mark.parametrize("units,per_metre", [("0.05644", 1 / 0.05644), (0.05644, 1 / 0.05644), ("2.54e-2", 1 / 0.0254),
                                             ("in", 1 / 0.0254), ("1", 1.0)])
def test_units_take_a_number_of_metres_per_file_unit(tmp_path, units, per_metre):
    ref = body("mixamo")
    m = read_bvh(scaled_bvh(tmp_path, per_metre), units=units)
    np.testing.assert_allclose(m.positions, ref.positions, atol=2e-4)
    assert "given" in m.meta["units"]


@pytest.mark.parametrize("per_metre,name", [(1.0, "m"), (100.0, "cm"), (1000.0, "mm")])
def test_units_told_from_the_body_say_what_they_chose(tmp_path, per_metre, name):
    m = read_bvh(scaled_bvh(tmp_path, per_metre))
    assert m.meta["unit_scale"] == pytest.approx(1 / per_metre) and m.meta["units"].startswith(name + ",")


@pytest.mark.parametrize("per_metre", [1 / 0.05644, 10.0, 1e5])
def test_a_body_size_that_cannot_be_placed_names_units(tmp_path, per_metre):
    with pytest.raises(UnitError, match="--units"):
        read_bvh(scaled_bvh(tmp_path, per_metre))


@pytest.mark.parametrize("bad", ["-1", "0", "abc", "nan"])
def test_bad_units_value_is_one_clear_error(tmp_path, bad, capsys):
    p = scaled_bvh(tmp_path, 100.0)
    assert main(["--units", bad, "info", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eai: error: --units") and err.count("\n") == 1


# --- C. Up axis -------------------------------------------------------------------------------------------

def turned(m: Motion, axis: str) -> Motion:
    """The y-up motion written with `axis` up (the inverse of what the reader must do)."""
    return Motion(m.positions @ _TURN[axis].astype(np.float32), m.joints, m.parents, m.fps, m.layout, m.label)


@pytest.mark.parametrize("axis", ["y", "z", "-z", "-y", "x", "-x"])
@pytest.mark.parametrize("layout,ext", [("mixamo", "bvh"), ("mediapipe33", "npz"), ("kinect25", "csv")])
def test_up_axis_told_from_the_body_and_turned_to_y(tmp_path, axis, layout, ext):
    ref = body(layout)
    p = tmp_path / f"up.{ext}"
    write_motion(turned(ref, axis), p)
    m = read_motion(p, units="m")
    assert m.meta["up"] == axis
    np.testing.assert_allclose(m.positions, ref.positions, atol=2e-5)
    d = describe(unify(m).metres(), unify(m).mask, 30.0)
    assert abs(d["trunk_lean"]["value"] - describe(unify(ref).metres(), unify(ref).mask, 30.0)["trunk_lean"]["value"]) < 1


def test_up_given_overrides_detection(tmp_path):
    ref = body("mixamo")
    p = tmp_path / "z.bvh"
    write_motion(turned(ref, "z"), p)
    np.testing.assert_allclose(read_bvh(p, units="m", up="z").positions, ref.positions, atol=2e-5)
    kept = read_bvh(p, units="m", up="y")  # the user's word wins, even when the body disagrees
    np.testing.assert_allclose(kept.positions, turned(ref, "z").positions, atol=2e-5)
    with pytest.raises(EaiError, match="--up 'q'"):
        read_bvh(p, units="m", up="q")


@pytest.mark.parametrize("degrees", [45, 135])
def test_a_body_along_no_axis_is_refused_naming_up(tmp_path, degrees, capsys):
    ref = body("mixamo")
    a = np.radians(degrees)
    R = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], np.float32)
    p = tmp_path / "tilted.bvh"
    write_motion(Motion(ref.positions @ R.T, ref.joints, ref.parents, 30.0), p)
    with pytest.raises(UpError, match="--up"):
        read_bvh(p, units="m")
    assert main(["--units", "m", "features", str(p)]) == 2 and "--up" in capsys.readouterr().err
    assert main(["--units", "m", "info", str(p)]) == 0  # info shows the file and says why
    assert "cannot tell the up axis" in capsys.readouterr().out


# --- D. Kinect v2 text ------------------------------------------------------------------------------------

def kinect_text(m: Motion, sep=",", header="none", joints=None, states=None, crlf=False, trailing=False,
                decimal_comma=False, time=None) -> str:
    """Kinect text as recorders write it. header: none, suffix (<J>_x), glued (headX), dotted (<J>.X), two-rows."""
    names, _ = kinect_joints()
    joints = joints or names
    idx = [names.index(j) for j in joints]
    rows = []
    if header == "two-rows":
        top = ([""] if time is not None else []) + [c for j in joints for c in (j, "", "") + (("",) if states else ())]
        axis = (["Time"] if time is not None else []) + [c for j in joints for c in ("X", "Y", "Z") +
                                                          (("State",) if states else ())]
        rows += [top, axis]
    elif header != "none":
        form = {"suffix": "{}_{}", "glued": "{}{}", "dotted": "{}.{}"}[header]
        cols = (["timestamp"] if time is not None else [])
        for j in joints:
            jj = j[0].lower() + j[1:] if header == "glued" else j
            cols += [form.format(jj, a.upper() if header != "suffix" else a) for a in "xyz"]
            if states:
                cols.append(f"{jj}TrackingState")
        rows.append(cols)
    for t in range(m.n_frames):
        row = [] if time is None else [repr(float(time[t]))]
        for j, i in zip(joints, idx):
            row += [f"{v:.6f}" for v in m.positions[t, i]]
            if states:
                row.append(str(states(t, j)))
        if decimal_comma:
            row = [c.replace(".", ",") for c in row]
        rows.append(row)
    end = "\r\n" if crlf else "\n"
    return end.join(sep.join(r) + (sep if trailing else "") for r in rows) + end


KINECT_VARIANTS = {
    "comma": {},
    "semicolon decimal comma": dict(sep=";", decimal_comma=True),
    "tab trailing crlf": dict(sep="\t", trailing=True, crlf=True),
    "spaces": dict(sep=" "),
    "suffix header": dict(header="suffix"),
    "glued header semicolon trailing": dict(header="glued", sep=";", trailing=True),
    "dotted header tab": dict(header="dotted", sep="\t"),
    "two header rows": dict(header="two-rows", sep=";", trailing=True, crlf=True),
    "two header rows decimal comma": dict(header="two-rows", sep=";", decimal_comma=True),
    "states as numbers": dict(header="glued", states=lambda t, j: 2),
    "states as words": dict(header="suffix", states=lambda t, j: "Tracked"),
    "two rows with states": dict(header="two-rows", sep=",", states=lambda t, j: "Tracked"),
}


@pytest.mark.parametrize("name", sorted(KINECT_VARIANTS))
def test_kinect_text_variants_read_right(tmp_path, name):
    ref = body()
    p = tmp_path / "k.csv"
    p.write_bytes(kinect_text(ref, **KINECT_VARIANTS[name]).encode())
    m = read_kinect_csv(p)
    assert m.joints == kinect_joints()[0] and m.fps == 30.0
    np.testing.assert_allclose(m.positions, ref.positions, atol=1e-5)
    assert travel(m) == pytest.approx(travel(ref), abs=1e-3)


UPPER = ["SpineBase", "SpineMid", "Neck", "Head", "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
         "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "SpineShoulder"]


@pytest.mark.parametrize("joints", [UPPER, UPPER[:4] + ["HipLeft", "HipRight", "KneeLeft", "KneeRight"]])
@pytest.mark.parametrize("header", ["glued", "two-rows"])
def test_kinect_joint_subset_is_absent_not_invented(tmp_path, joints, header, capsys):
    ref = body()
    p = tmp_path / "sub.csv"
    p.write_text(kinect_text(ref, header=header, joints=joints, sep=";"))
    m = read_kinect_csv(p)
    assert m.joints == [j for j in kinect_joints()[0] if j in joints] and m.layout == "kinect25"
    np.testing.assert_allclose(m.positions, ref.positions[:, [ref.joints.index(j) for j in m.joints]], atol=1e-5)
    u = unify(m)
    can = registry().canonical
    assert not u.mask[can.index("l_ankle")] and u.mask[can.index("head")]
    d = describe(u.metres(), u.mask, u.fps)
    assert d["step_frequency"]["value"] is None  # needs ankles: missing, not made up
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "l_ankle" in info["canonical_missing"] and info["unmatched_joints"] == []


@pytest.mark.parametrize("words", [False, True])
def test_kinect_not_tracked_samples_are_masked_and_filled(tmp_path, words):
    ref = body()
    bad = {(t, "WristLeft") for t in range(20, 26)} | {(t, "HandTipRight") for t in range(10, 60)}
    state = (lambda t, j: ("Inferred" if t % 2 else "NotTracked") if (t, j) in bad else "Tracked") if words else \
        (lambda t, j: (t % 2) if (t, j) in bad else 2)
    m_bad = Motion(ref.positions.copy(), ref.joints, ref.parents, 30.0, "kinect25")
    wl = ref.joints.index("WristLeft")
    m_bad.positions[20:26, wl] += 0.5  # what an inferred joint looks like: off the body
    p = tmp_path / "st.csv"
    p.write_text(kinect_text(m_bad, header="glued", states=state))
    m = read_kinect_csv(p)
    assert "HandTipRight" not in m.joints  # not tracked in most frames: absent
    got = m.positions[20:26, m.joints.index("WristLeft")]
    line = np.linspace(ref.positions[19, wl], ref.positions[26, wl], 8)[1:-1]
    np.testing.assert_allclose(got, line, atol=1e-5)  # the file's inferred values are not used
    assert m.meta["filled_samples"] == 6 and m.meta["removed_joints"] == ["HandTipRight"]


# --- E. Timestamps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit,sec", [("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("100 ns ticks", 1e-7)])
@pytest.mark.parametrize("fps", [30.0, 15.0, 60.0])
@pytest.mark.parametrize("header", ["none", "suffix"])
def test_timestamp_unit_told_from_spacing(tmp_path, unit, sec, fps, header):
    if unit == "100 ns ticks" and fps != 30.0:
        pytest.skip("Kinect ticks come at Kinect's 30 fps")
    ref = body()
    rng = np.random.default_rng(0)
    t = 1234.5 / sec + (np.arange(ref.n_frames) + rng.uniform(-0.05, 0.05, ref.n_frames)) / fps / sec
    p = tmp_path / "t.csv"
    p.write_text(kinect_text(ref, header=header, time=t))
    m = read_kinect_csv(p)
    assert m.fps == pytest.approx(fps, rel=0.01) and m.meta["time_unit"] == unit
    assert any("timestamps in" in n for n in m.meta["notes"])


def test_frame_counter_column_is_not_time(tmp_path):
    ref = body()
    p = tmp_path / "n.csv"
    p.write_text(kinect_text(ref, time=np.arange(ref.n_frames)))
    assert read_kinect_csv(p).fps == 30.0


# --- F. Untracked frames written as zeros -----------------------------------------------------------------

def with_zeros(m: Motion, frames, joint_frames=()) -> Motion:
    z = Motion(m.positions.copy(), m.joints, m.parents, m.fps, m.layout)
    z.positions[list(frames)] = 0
    for t, j in joint_frames:
        z.positions[t, j] = 0
    return z


@pytest.mark.parametrize("ext", ["csv", "npz", "pkl"])
def test_zero_frames_are_missing_data(tmp_path, ext):
    ref = body(seconds=3.0)
    lead, inner, tail = range(0, 3), range(40, 46), range(87, 90)
    z = with_zeros(ref, [*lead, *inner, *tail], [(t, 7) for t in range(60, 64)] if ext != "npz" else ())
    p = tmp_path / f"z.{ext}"
    if ext == "pkl":
        p.write_bytes(pickle.dumps({"annotations": [{"keypoint": z.positions[None], "label": 0}]}))
    else:
        write_motion(z, p)
    m = read_motion(p, trust_pickle=True)
    assert m.n_frames == 84 and m.meta["dropped_frames"] == 6 and m.meta["filled_frames"] == 6
    assert not np.any(np.all(m.positions == 0, axis=-1))
    kept = ref.positions[3:87]
    np.testing.assert_allclose(m.positions[:37], kept[:37], atol=1e-5)
    assert travel(m) == pytest.approx(travel(Motion(kept, ref.joints, ref.parents, 30.0, "kinect25")), abs=0.03)


def test_long_untracked_stretch_is_refused(tmp_path):
    p = tmp_path / "long.csv"
    write_motion(with_zeros(body(seconds=4.0), range(30, 70)), p)
    with pytest.raises(FormatError, match="no body tracked in frames 30-69"):
        read_motion(p)


def test_unify_never_centres_or_faces_on_an_all_zero_frame():
    ref = body()
    z = with_zeros(ref, [0])
    u, r = unify(z), unify(ref)
    np.testing.assert_allclose(u.positions[1:], unify(Motion(ref.positions[1:], ref.joints, ref.parents, 30.0,
                                                             "kinect25")).positions, atol=1e-3)
    assert r.height == pytest.approx(u.height, rel=1e-3)


# --- G. NPZ joint names as bytes --------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["kinect25", "mixamo"])
def test_npz_bytes_names_decoded(tmp_path, layout):
    ref = body(layout)
    p = tmp_path / "b.npz"
    np.savez(p, positions=ref.positions, joints=np.array([j.encode() for j in ref.joints], dtype="S"),
             fps=np.float64(30), label=np.array(b"sad"))
    m = read_motion(p)
    assert m.joints == ref.joints and m.label == "sad" and unify(m).layout == layout


# --- H. PYSKL annotations that cannot be a clip -----------------------------------------------------------

@pytest.mark.parametrize("bad,what", [
    ({"keypoint": np.zeros((0, 30, 25, 3)), "label": 0}, "no person"),
    ({"keypoint": np.zeros((0, 0, 17, 3)), "label": 0}, "no person"),
    ({"label": 7}, "label 7 is not an index"),
    ({"label": -1}, "label -1 is not an index"),
])
@pytest.mark.parametrize("where", [0, 2])
def test_pyskl_bad_annotation_named_in_one_line(tmp_path, capsys, bad, what, where):
    good = {"keypoint": body().positions[None], "label": 1, "frame_dir": "ok"}
    anns = [dict(good) for _ in range(3)]
    anns[where] = {**good, **bad, "frame_dir": "bad_clip"}
    p = tmp_path / "a.pkl"
    p.write_bytes(pickle.dumps({"annotations": anns, "label_names": ["sad", "happy"]}))
    assert main(["--trust-pickle", "info", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"annotation {where} (bad_clip)" in err and what in err and err.count("\n") == 1
    assert "internal error" not in err


def test_pyskl_bad_file_listed_among_dataset_problems(tmp_path, capsys):
    for i, label in enumerate(["sad", "happy"]):
        (tmp_path / label).mkdir()
        write_motion(body(emotion=label), tmp_path / label / f"c{i}.npz")
    (tmp_path / "sad" / "x.pkl").write_bytes(pickle.dumps({"annotations": [{"keypoint": np.zeros((0, 3, 25, 3))}]}))
    assert main(["data", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clips"] == 2 and any("x.pkl" in p for p in out["problems"])


# --- I. unmatched_joints with detection's names, and what info reports ------------------------------------

@pytest.mark.parametrize("prefix", ["mixamorig:", "Armature|", "rig:sub:", ""])
def test_unmatched_joints_use_normalised_names(tmp_path, capsys, prefix):
    ref = body("mixamo")
    m = Motion(ref.positions, [prefix + j for j in ref.joints], ref.parents, 30.0)
    m.positions = np.concatenate([m.positions, m.positions[:, :1]], axis=1)
    m.joints, m.parents = m.joints + ["Prop"], m.parents + [0]
    p = tmp_path / "n.npz"
    write_motion(m, p)
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "mixamo" and info["unmatched_joints"] == ["Prop"]


def test_info_reports_what_the_readers_did(tmp_path, capsys):
    p = tmp_path / "z.bvh"
    m = turned(body("mixamo"), "z")
    m.positions *= 100
    write_motion(m, p)
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["up"] == "z" and info["unit_scale"] == 0.01 and info["units"].startswith("cm")
    assert any("turned to y up" in n for n in info["notes"])
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "up axis   z in the file (turned to y up)" in out and "units     0.01 m per file unit" in out


# --- a closed pipe ----------------------------------------------------------------------------------------

def test_closed_pipe_ends_quietly(tmp_path):
    p = tmp_path / "k.csv"
    write_motion(body(), p)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(f"'{sys.executable}' -m eai.cli info '{p}' | head -1", shell=True, capture_output=True,
                       text=True, env=env)
    assert r.stdout.strip() == str(p) and r.stderr == ""
    r = subprocess.run(f"'{sys.executable}' -m eai.cli data '{tmp_path.parent}' 2>&1 | head -c 1", shell=True,
                       capture_output=True, text=True, env=env)
    assert "BrokenPipe" not in r.stdout + r.stderr
