"""Layout registry, detection, user layouts, unify (centre, facing, scale, resample), windows, augmentation."""
import json

import numpy as np
import pytest

from eai.data.synth import express, generate
from eai.data.windows import windows
from eai.errors import LayoutError
from eai.skeleton.registry import Registry, registry
from eai.skeleton.unify import (
    facing_angle,
    mirror,
    resample,
    rotate_y,
    to_canonical,
    unify,
)

LAYOUTS = ["bandai22", "xsens23", "neuron", "mixamo", "kinect25", "gait16", "smpl24", "smpl22", "coco17",
           "mediapipe33"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_detected_from_its_names(name):
    layout = registry().get(name)
    found, index = registry().detect(list(layout.joints))
    assert found.name == name and index == list(range(len(layout.joints)))
    assert len(layout.pairs) >= 4  # left/right pairs follow from the mirror rule


def test_layout_sizes():
    sizes = {n: len(registry().get(n).joints) for n in LAYOUTS}
    assert sizes["bandai22"] == 22 and sizes["xsens23"] == 23 and sizes["kinect25"] == 25
    assert sizes["gait16"] == 16 and sizes["smpl22"] == 22 and sizes["smpl24"] == 24
    assert sizes["coco17"] == 17 and sizes["mediapipe33"] == 33 and sizes["neuron"] == 59


def test_detection_tolerates_prefixes_case_and_extra_joints():
    names = ["mixamorig:" + j for j in registry().get("mixamo").joints] + ["mixamorig:LeftHandIndex1"]
    assert registry().detect(names)[0].name == "mixamo"
    names = [j.upper() for j in registry().get("kinect25").joints]
    assert registry().detect(names)[0].name == "kinect25"


def test_unknown_names_list_near_matches():
    names = list(registry().get("bandai22").joints)
    names[names.index("Hips")] = "Hipz"
    with pytest.raises(LayoutError) as e:
        registry().detect(names)
    assert "bandai22" in e.value.message and "Hipz" in e.value.message and "Hips" in e.value.message


def test_user_layout_file(tmp_path):
    spec = {"layouts": {"stick5": {"mirror": ["L", "R"], "joints": [
        ["root", None, "pelvis"], ["head", "root", "head"], ["hipL", "root", "l_hip"], ["hipR", "root", "r_hip"],
        ["footL", "hipL", "l_ankle"]]}}}
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(spec))
    reg = Registry()
    assert reg.register_file(f) == ["stick5"]
    assert reg.detect(["root", "head", "hipL", "hipR", "footL"])[0].name == "stick5"
    bad = tmp_path / "bad.yaml"
    bad.write_text("layouts:\n  x:\n    joints:\n      - [a, null, elbow]\n")
    with pytest.raises(LayoutError, match="not a canonical joint"):
        reg.register_file(bad)


def test_unify_known_pose(known_motion):
    u = unify(known_motion(), fps=30.0)
    can = registry().canonical
    x = u.positions * u.height
    pel, head, lh = can.index("pelvis"), can.index("head"), can.index("l_hip")
    # facing +x turned to +z; left hip (was at -z) now at +x; pelvis at origin on x/z, height kept
    np.testing.assert_allclose(x[0, pel], [0, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(x[0, lh], [0.1, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(x[0, head], [0, 0.9, 0], atol=1e-6)
    # ankle->knee->hip->pelvis (0.25+0.25+0.1) + pelvis->spine->neck->head (0.1+0.2+0.1)
    assert u.height == pytest.approx(1.0, abs=1e-5)
    assert u.n_frames == 35  # 30 frames at 25 fps span 29/25 s: 35 frames at 30 fps
    assert u.mask.sum() == 16 and not u.mask[can.index("chest")]


def test_to_canonical_fills_absent_joints_on_ancestors(known_motion):
    x, mask, _ = to_canonical(known_motion())
    can = registry().canonical
    np.testing.assert_array_equal(x[:, can.index("chest")], x[:, can.index("spine")])
    assert not mask[can.index("l_toe")]


def test_derived_joints_for_coco():
    P = generate("neutral", 2.0, seed=1)
    m = express(P, registry().get("coco17"), 30.0)
    x, mask, layout = to_canonical(m)
    can = registry().canonical
    assert layout.name == "coco17" and mask[can.index("pelvis")]
    np.testing.assert_allclose(x[:, can.index("pelvis")], (x[:, can.index("l_hip")] + x[:, can.index("r_hip")]) / 2,
                               atol=1e-6)


def test_facing_and_rotation(known_motion):
    u = unify(known_motion())
    assert facing_angle(u.positions[0], u.mask) == pytest.approx(0.0, abs=1e-6)
    r = rotate_y(u.positions, np.pi / 2)
    assert facing_angle(r[0], u.mask) == pytest.approx(np.pi / 2, abs=1e-6)
    # one angle per item of a batch; heights kept
    angles = np.array([-2.0, -0.5, 0.3, 1.2])
    batch = rotate_y(np.repeat(u.positions[None, :5], 4, 0), angles)
    assert [facing_angle(b[0], u.mask) for b in batch] == pytest.approx(angles, abs=1e-6)
    np.testing.assert_allclose(batch[..., 1], np.repeat(u.positions[None, :5], 4, 0)[..., 1])


def test_mirror_swaps_sides_and_is_an_involution(known_motion):
    u = unify(known_motion())
    can = registry().canonical
    m, mask = mirror(u.positions, u.mask)
    np.testing.assert_allclose(m[:, can.index("r_hip")], u.positions[:, can.index("l_hip")] * [-1, 1, 1])
    back, mask2 = mirror(m, mask)
    np.testing.assert_array_equal(back, u.positions)
    np.testing.assert_array_equal(mask2, u.mask)


def test_resample_linear():
    x = np.arange(11, dtype=np.float32)[:, None]
    np.testing.assert_allclose(resample(x, 10, 20)[:, 0], np.arange(21) / 2)
    assert resample(x, 30, 30) is x


def test_windows_count_centre_and_pad(known_motion):
    u = unify(known_motion(T=125), fps=25.0)
    w, valid = windows(u.positions, 60, 30)
    assert w.shape[0] == 3 and (valid == 60).all()
    short, valid = windows(u.positions[:20], 60, 30)
    assert short.shape == (1, 60, 23, 3) and valid[0] == 20
    pel = registry().canonical.index("pelvis")
    np.testing.assert_allclose(w[:, 0, pel, [0, 2]], 0, atol=1e-6)
