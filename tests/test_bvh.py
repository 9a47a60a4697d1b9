"""BVH reading: FK on hand-made hierarchies with known answers, strict errors, round trips, the oracle."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eai.errors import FormatError
from eai.io.bvh import read_bvh, read_bvh_many, write_bvh


def rot(axis, deg):
    """Independent elementary rotation (column vectors)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return {"X": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "Y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "Z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def bvh_text(joints, frames, frame_time=1 / 30):
    """joints: list of (name, parent index, offset, channels); frames: (T, C)."""
    out = ["HIERARCHY"]
    children = {i: [j for j, jt in enumerate(joints) if jt[1] == i] for i in range(len(joints))}

    def emit(i, depth):
        name, _, off, ch = joints[i]
        pad = "  " * depth
        out.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {name}")
        out.append(pad + "{")
        out.append(f"{pad}  OFFSET {off[0]} {off[1]} {off[2]}")
        out.append(f"{pad}  CHANNELS {len(ch)} {' '.join(ch)}")
        for c in children[i]:
            emit_rec(c, depth + 1)
        if not children[i]:
            out.extend([f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET 0 1 0", pad + "  }"])
        out.append(pad + "}")

    order = []

    def emit_rec(i, depth):  # record the file's joint order (depth first)
        order.append(i)
        emit(i, depth)

    emit_rec(0, 0)
    # frame columns follow the file's joint order; `frames` holds them in list order
    starts = np.cumsum([0] + [len(j[3]) for j in joints])
    cols = [c for i in order for c in range(starts[i], starts[i + 1])]
    frames = np.asarray(frames, float).reshape(len(frames), -1)[:, cols]
    out.extend(["MOTION", f"Frames: {len(frames)}", f"Frame Time: {frame_time}"])
    out.extend(" ".join(f"{v:.6f}" for v in row) for row in frames)
    return "\n".join(out) + "\n"


def test_known_pose_two_bones(tmp_path):
    # root at (1, 2, 3) m; child 1 m up, rotated 90 deg about Z at the root: it lands at -x
    joints = [("root", -1, (0, 0, 0), ["Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation"]),
              ("child", 0, (0, 1, 0), ["Zrotation", "Xrotation", "Yrotation"]),
              ("tip", 1, (0, 1, 0), [])]
    joints[2] = ("tip", 1, (0, 1, 0), ["Xrotation"])
    frames = np.array([[1, 2, 3, 90, 0, 0, 0, 0, 0, 0]], float)
    p = tmp_path / "a.bvh"
    p.write_text(bvh_text(joints, frames))
    m = read_bvh(p, units="m")
    np.testing.assert_allclose(m.positions[0], [[1, 2, 3], [0, 2, 3], [-1, 2, 3]], atol=1e-6)
    assert m.joints == ["root", "child", "tip"] and m.parents == [-1, 0, 1]
    assert m.fps == pytest.approx(30)


@pytest.mark.parametrize("order", ["".join(p) for p in itertools.permutations("XYZ")])
def test_every_rotation_order(tmp_path, order):
    rng = np.random.default_rng(len(order) + ord(order[0]))
    angles = rng.uniform(-170, 170, size=(4, 6))
    chans = [f"{a}rotation" for a in order]
    joints = [("a", -1, (0.1, 0.9, 0.0), chans), ("b", 0, (0.0, 0.3, 0.1), chans), ("c", 1, (0.2, 0.1, -0.3), [])]
    frames = angles
    p = tmp_path / "o.bvh"
    p.write_text(bvh_text(joints, frames))
    m = read_bvh(p, units="m")
    for t in range(len(frames)):
        R0 = rot(order[0], frames[t, 0]) @ rot(order[1], frames[t, 1]) @ rot(order[2], frames[t, 2])
        R1 = R0 @ rot(order[0], frames[t, 3]) @ rot(order[1], frames[t, 4]) @ rot(order[2], frames[t, 5])
        a = np.array([0.1, 0.9, 0.0])
        b = a + R0 @ np.array([0.0, 0.3, 0.1])
        c = b + R1 @ np.array([0.2, 0.1, -0.3])
        np.testing.assert_allclose(m.positions[t], [a, b, c], atol=1e-5)


def test_position_channels_replace_offset_on_any_joint(tmp_path):
    joints = [("r", -1, (5, 5, 5), ["Yposition", "Yrotation"]),
              ("k", 0, (9, 9, 9), ["Zposition", "Xposition", "Yposition"]), ("e", 1, (0, 1, 0), [])]
    frames = np.array([[2.0, 90.0, 1.0, 0.5, 0.0]])
    p = tmp_path / "p.bvh"
    p.write_text(bvh_text(joints, frames))
    m = read_bvh(p, units="m")
    r = np.array([5, 2, 5])  # only Y replaced
    k = r + rot("Y", 90) @ np.array([0.5, 0.0, 1.0])
    np.testing.assert_allclose(m.positions[0, :2], [r, k], atol=1e-6)


def test_units_detected_and_given(tmp_path):
    joints = [("h", -1, (0, 0, 0), ["Xposition", "Yposition", "Zposition"]), ("f", 0, (0, -90, 0), []),
              ("t", 0, (0, 80, 0), [])]
    p = tmp_path / "u.bvh"
    p.write_text(bvh_text(joints, np.array([[0, 95, 0]], float)))
    assert read_bvh(p).positions[0, 1, 1] == pytest.approx(0.05, abs=1e-6)  # centimetres detected
    assert read_bvh(p, units="mm").positions[0, 0, 1] == pytest.approx(0.095)


def _valid(tmp_path, n=100):
    joints = [("h", -1, (0, 0, 0), ["Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation"]),
              ("s", 0, (0, 50, 0), ["Zrotation", "Xrotation", "Yrotation"]), ("n", 1, (0, 40, 0), [])]
    frames = np.random.default_rng(0).uniform(-30, 30, (n, 9))
    frames[:, 1] += 95
    p = tmp_path / "v.bvh"
    p.write_text(bvh_text(joints, frames))
    return p


BAD = {
    "truncated": lambda t: t[: len(t) // 2],
    "header only": lambda t: t.split("MOTION")[0],
    "channel count": lambda t: t.replace("CHANNELS 3 Zrotation", "CHANNELS 2 Zrotation", 1),
    "non-numeric": lambda t: t.replace("\n", "\nabc ", t.count("\n") - 3)[::1],
    "nan": lambda t: "\n".join(l if i != 30 else "nan " + l.split(" ", 1)[1] for i, l in enumerate(t.split("\n"))),
    "inf": lambda t: "\n".join(l if i != 40 else "inf " + l.split(" ", 1)[1] for i, l in enumerate(t.split("\n"))),
    "zero frames": lambda t: t.split("Frames:")[0] + "Frames: 0\nFrame Time: 0.0333\n",
    "extra value": lambda t: "\n".join(l + (" 1.0" if i == 50 else "") for i, l in enumerate(t.split("\n"))),
    "two roots": lambda t: t.replace("MOTION", "ROOT x\n{\n OFFSET 0 0 0\n CHANNELS 0\n}\nMOTION", 1),
    "no hierarchy": lambda t: t.replace("HIERARCHY", "HIERARCHIE"),
    "bad frame time": lambda t: t.replace("Frame Time: 0.03333", "Frame Time: -1"),
    "unbalanced": lambda t: t.replace("}", "", 1),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_files_raise_one_clear_error(tmp_path, case):
    text = _valid(tmp_path).read_text()
    p = tmp_path / "bad.bvh"
    p.write_text(BAD[case](text))
    with pytest.raises(FormatError) as e:
        read_bvh(p)
    msg = e.value.format()
    assert "\n" not in msg and str(p) in msg


def test_error_names_the_line(tmp_path):
    text = _valid(tmp_path).read_text().split("\n")
    text[40] = "1.0 2.0 oops " + " ".join(text[40].split()[3:])
    p = tmp_path / "l.bvh"
    p.write_text("\n".join(text))
    with pytest.raises(FormatError) as e:
        read_bvh(p)
    assert e.value.line == 41 and "oops" in e.value.message


def test_binary_garbage_and_empty(tmp_path):
    p = tmp_path / "g.bvh"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(FormatError):
        read_bvh(p)
    p.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        read_bvh(p)


def test_huge_file_refused_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "huge.bvh"
    with open(p, "wb") as f:  # sparse: 1 GiB on paper, nothing on disk
        f.truncate(2**30)
    with pytest.raises(FormatError, match="limit"):
        read_bvh(p)
    monkeypatch.setenv("EAI_MAX_FILE_MB", "0.001")
    with pytest.raises(FormatError, match="limit"):
        read_bvh(_valid(tmp_path))


def test_write_read_round_trip(tmp_path):
    m = read_bvh(_valid(tmp_path))
    out = tmp_path / "w.bvh"
    write_bvh(m, out)
    back = read_bvh(out, units="m")
    np.testing.assert_allclose(back.positions, m.positions, atol=2e-6)
    assert back.joints == m.joints and back.parents == m.parents


def test_many_matches_one_by_one(tmp_path):
    paths = []
    for i in range(3):
        p = _valid(tmp_path, n=80 + 10 * i)
        q = tmp_path / f"c{i}.bvh"
        q.write_text(p.read_text())
        paths.append(q)
    bad = tmp_path / "bad.bvh"
    bad.write_text(BAD["nan"](paths[0].read_text()))
    res = read_bvh_many(paths + [bad])
    for p, r in zip(paths, res):
        np.testing.assert_array_equal(r.positions, read_bvh(p).positions)
    assert isinstance(res[-1], FormatError)


def test_reads_the_same_without_polars(tmp_path, monkeypatch):
    """polars only speeds up the frame block: without it the careful parser reads the same numbers."""
    import sys

    from eai.io import bvh

    p = _valid(tmp_path, n=50)
    fast = read_bvh(p)
    assert bvh._parse_frames_fast(b"1 2 3\n4 5 6\n", 3) is not None
    monkeypatch.setitem(sys.modules, "polars", None)  # import polars -> ImportError
    assert bvh._parse_frames_fast(b"1 2 3\n4 5 6\n", 3) is None
    slow = read_bvh(p)
    np.testing.assert_array_equal(slow.positions, fast.positions)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_hierarchies_match_reference_fk(tmp_path_factory, data):
    n = data.draw(st.integers(1, 6))
    joints = []
    for i in range(n):
        parent = -1 if i == 0 else data.draw(st.integers(0, i - 1))
        off = data.draw(st.tuples(*[st.floats(-1, 1)] * 3))
        rot_axes = data.draw(st.permutations("XYZ"))[: data.draw(st.integers(0, 3))]
        pos_axes = data.draw(st.permutations("XYZ"))[: data.draw(st.integers(0, 3))]
        ch = [f"{a}position" for a in pos_axes] + [f"{a}rotation" for a in rot_axes]
        ch = data.draw(st.permutations(ch)) if ch else ch
        joints.append((f"j{i}", parent, off, list(ch)))
    C = sum(len(j[3]) for j in joints)
    T = data.draw(st.integers(1, 4))
    frames = np.array(data.draw(st.lists(st.lists(st.floats(-180, 180), min_size=C, max_size=C),
                                         min_size=T, max_size=T)), float).reshape(T, C)
    frames = np.round(frames, 4)
    p = tmp_path_factory.mktemp("h") / "r.bvh"
    p.write_text(bvh_text(joints, frames))
    if C == 0:
        with pytest.raises(FormatError):
            read_bvh(p, units="m")
        return
    m = read_bvh(p, units="m")
    for t in range(T):
        col, Rw, Pw = 0, [], []
        for name, parent, off, ch in joints:
            tr, R = np.array(off, float), np.eye(3)
            for c in ch:
                v = frames[t, col]
                col += 1
                if c.endswith("position"):
                    tr["XYZ".index(c[0])] = v
                else:
                    R = R @ rot(c[0], v)
            if parent < 0:
                Pw.append(tr), Rw.append(R)
            else:
                Pw.append(Pw[parent] + Rw[parent] @ tr), Rw.append(Rw[parent] @ R)
        idx = [m.joints.index(f"j{i}") for i in range(n)]
        np.testing.assert_allclose(m.positions[t, idx], np.array(Pw), atol=2e-4)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fuzzed_bytes_give_motion_or_format_error(tmp_path_factory, data):
    base = _valid(tmp_path_factory.mktemp("f"), n=70).read_bytes()
    b = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(b) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        if op == "flip":
            b[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del b[i: i + data.draw(st.integers(1, 200))]
        else:
            b[i:i] = b[i: i + data.draw(st.integers(1, 50))]
    p = tmp_path_factory.mktemp("g") / "x.bvh"
    p.write_bytes(bytes(b))
    try:
        m = read_bvh(p)
    except FormatError as e:
        assert "\n" not in e.format()
    else:
        assert np.isfinite(m.positions).all()


@pytest.mark.slow
def test_bandai_matches_bvhio_oracle(bandai):
    """World positions agree with bvhio (an independent BVH library) on real clips."""
    import bvhio

    for path in sorted((bandai / "data").glob("*.bvh"))[::40]:
        m = read_bvh(path)
        root = bvhio.readAsHierarchy(str(path))
        layout = root.layout()
        names = [j.Name for j, _, _ in layout]
        for frame in (0, m.n_frames // 2, m.n_frames - 1):
            root.loadPose(frame)
            ref = np.array([j.PositionWorld.to_tuple() if hasattr(j.PositionWorld, "to_tuple")
                            else tuple(j.PositionWorld) for j, _, _ in layout]) / 100.0
            idx = [m.joints.index(n) for n in names if n in m.joints]
            got = m.positions[frame, idx]
            keep = [i for i, n in enumerate(names) if n in m.joints]
            np.testing.assert_allclose(got, ref[keep], atol=1e-4)
