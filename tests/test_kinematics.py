"""Descriptors on motions with known answers; missing joints reported, not invented."""
import numpy as np
import pytest

from eai.data.synth import express, generate
from eai.features import NAMES, describe, descriptor_vector
from eai.skeleton.registry import registry
from eai.skeleton.unify import unify


def _metres(m):
    u = unify(m)
    return u.metres(), u.mask, u.fps


def test_still_body(known_motion):
    d = describe(*_metres(known_motion(T=90)))
    assert d["speed"]["value"] == pytest.approx(0, abs=1e-6)
    assert d["stillness"]["value"] == 1.0 and d["step_frequency"]["value"] == 0.0
    assert d["head_pitch"]["value"] == pytest.approx(0, abs=1e-4)
    assert d["trunk_lean"]["value"] == pytest.approx(0, abs=1e-4)
    assert d["hand_spread"]["value"] == pytest.approx(0.4, abs=1e-5)
    assert d["hand_height"]["value"] == pytest.approx(0.0, abs=1e-5)


def test_translation_at_known_speed(known_motion):
    m = known_motion(T=100)
    m.positions = m.positions + (np.arange(100)[:, None, None] / 25.0 * np.array([1.5, 0, 0])).astype(np.float32)
    d = describe(*_metres(m))
    assert d["travel_speed"]["value"] == pytest.approx(1.5, rel=1e-3)
    assert d["speed"]["value"] == pytest.approx(1.5, rel=1e-3)
    assert d["acceleration"]["value"] == pytest.approx(0, abs=1e-3)
    assert d["stillness"]["value"] == 0.0


def test_head_pitch_and_lean_known_angles(known_motion):
    m = known_motion(T=40)
    j = m.joints
    # the body faces +x: tilt the head 30 deg forward about the neck
    neck, head = j.index("neck"), j.index("head")
    L = 0.1
    m.positions[:, head] = m.positions[:, neck] + np.array([L * np.sin(np.radians(30)), L * np.cos(np.radians(30)), 0])
    d = describe(*_metres(m))
    assert d["head_pitch"]["value"] == pytest.approx(30, abs=0.01)


def test_missing_joints_reported_missing():
    P = generate("sad", 3.0, seed=2)
    m = express(P, registry().get("coco17"), 30.0)
    u = unify(m)
    d = describe(u.metres(), u.mask, u.fps)
    assert not [n for n, v in d.items() if v["missing"]]  # COCO's derived pelvis and neck give every one
    u.mask[registry().canonical.index("l_wrist")] = False
    d = describe(u.metres(), u.mask, u.fps)
    assert {n for n, v in d.items() if v["missing"]} == {"hand_spread", "hand_height", "arm_swing"}
    assert d["hand_spread"]["value"] is None and "l_wrist" in d["hand_spread"]["missing"]
    u.mask[registry().canonical.index("neck")] = False
    d = describe(u.metres(), u.mask, u.fps)
    assert {n for n, v in d.items() if v["missing"]} == {"hand_spread", "hand_height", "arm_swing", "head_pitch",
                                                          "trunk_lean"}
    assert np.isnan(descriptor_vector(u.metres(), u.mask, u.fps)[NAMES.index("hand_spread")])


def test_emotions_differ_the_way_they_should():
    def desc(e):
        u = unify(express(generate(e, 6.0, seed=5), registry().get("bandai22"), 30.0))
        return describe(u.metres(), u.mask, u.fps)

    sad, happy = desc("sad"), desc("happy")
    assert sad["travel_speed"]["value"] < 0.8 < happy["travel_speed"]["value"]
    assert sad["head_pitch"]["value"] > 15 > happy["head_pitch"]["value"]
    assert sad["arm_swing"]["value"] < happy["arm_swing"]["value"]
    assert 1.0 < sad["step_frequency"]["value"] < happy["step_frequency"]["value"]


def test_bandai_sad_walk(bandai):
    from eai.io import read_motion

    sad = unify(read_motion(bandai / "data" / "dataset-1_walk_sad_001.bvh"))
    normal = unify(read_motion(bandai / "data" / "dataset-1_walk_normal_001.bvh"))
    ds, dn = (describe(u.metres(), u.mask, u.fps) for u in (sad, normal))
    assert ds["travel_speed"]["value"] < dn["travel_speed"]["value"]
    assert ds["head_pitch"]["value"] > dn["head_pitch"]["value"] + 10
