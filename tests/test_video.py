"""The video path: MediaPipe's landmarks to a skeleton (geometry checked on known motion, without MediaPipe), the
head of the pose-estimator layouts, the missing extra, and the handed real clip through `eai pose` and
`eai explain` (needs the extra 'video'; `make test` installs it and sets EAI_REQUIRE_VIDEO=1, so there a
missing extra fails instead of skipping)."""
import builtins
import json
import os

import numpy as np
import pytest

from eai.cli.main import main
from eai.data.synth import express, generate
from eai.errors import EaiError
from eai.features import describe
from eai.io.pose_landmarks import Landmarks, focal_pixels, landmarks_to_motion
from eai.motion import Motion
from eai.skeleton.registry import registry
from eai.skeleton.unify import rotate_y, unify

from conftest import SHARED

CLIP = SHARED / "data" / "video" / "pose_segmentation.mp4"
MP = registry().get("mediapipe33")
IDX = {n: i for i, n in enumerate(MP.joints)}


def with_face(m: Motion) -> Motion:
    """A mediapipe33 motion from `express` (face landmarks on the head) given a face as MediaPipe places it: the
    ears 7.5 cm either side of the head point (a plumb line through ear and shoulder when upright), the eyes
    and nose ahead of it."""
    p = m.positions.copy()
    head = p[:, IDX["left_ear"]].copy()
    across = p[:, IDX["left_shoulder"]] - p[:, IDX["right_shoulder"]]
    across[:, 1] = 0
    across /= np.linalg.norm(across, axis=1, keepdims=True)
    fwd = np.cross(across, [0, 1, 0])
    up = np.array([0, 1, 0])
    face = {"left_ear": 0.075 * across, "right_ear": -0.075 * across, "nose": 0.10 * fwd - 0.02 * up,
            "left_eye": 0.08 * fwd + 0.02 * up + 0.03 * across, "right_eye": 0.08 * fwd + 0.02 * up - 0.03 * across,
            "left_eye_inner": 0.085 * fwd + 0.02 * up + 0.015 * across,
            "right_eye_inner": 0.085 * fwd + 0.02 * up - 0.015 * across,
            "left_eye_outer": 0.075 * fwd + 0.02 * up + 0.045 * across,
            "right_eye_outer": 0.075 * fwd + 0.02 * up - 0.045 * across,
            "mouth_left": 0.09 * fwd - 0.06 * up + 0.025 * across, "mouth_right": 0.09 * fwd - 0.06 * up - 0.025 * across}
    for n, off in face.items():
        p[:, IDX[n]] = head + off
    return Motion(p, m.joints, m.parents, m.fps, m.layout)


def walk_across(seconds=4.0, seed=3) -> Motion:
    """A generated neutral walk on mediapipe33 with a face, walking along +x from x = -2.4 m (across the image)."""
    P = generate("neutral", seconds, seed=seed)
    pelvis = registry().canonical.index("pelvis")
    P = P - P[0, pelvis] * np.array([1, 0, 1])
    d = P[-1, pelvis] - P[0, pelvis]
    P = rotate_y(P, np.arctan2(d[2], d[0])) + np.array([-2.4, 0, 0])  # the travel turned onto +x
    return with_face(express(P.astype(np.float32), MP, 30.0))


def as_mediapipe(m: Motion, rng, size=(1280, 720), depth=5.0, camera_height=1.0, noise_m=0.01, noise_px=1.0,
                 dropped=0.03, lost=range(60, 64)) -> Landmarks:
    """What MediaPipe would report of a y-up motion filmed by a still, level pinhole camera (the module's field of
    view) `depth` metres away: world landmarks y down, z away, re-centred on the hip midpoint every frame; image
    landmarks in pixels; noise, joints dropped (low visibility, their values wrong) and frames without a person."""
    cam = m.positions.astype(np.float64) * np.array([1, -1, -1]) + np.array([0, camera_height, depth])
    hip = cam[:, [IDX["left_hip"], IDX["right_hip"]]].mean(axis=1, keepdims=True)
    world = cam - hip + rng.normal(0, noise_m, cam.shape)
    f, (w, h) = focal_pixels(size[0]), size
    image = f * cam[..., :2] / cam[..., 2:] + np.array([w / 2, h / 2]) + rng.normal(0, noise_px, cam.shape[:2] + (2,))
    vis = np.ones(cam.shape[:2])
    drop = rng.random(vis.shape) < dropped
    vis[drop] = 0.1
    world[drop] += rng.normal(0, 0.3, (drop.sum(), 3))  # a joint MediaPipe barely sees is placed badly
    world[list(lost)] = np.nan
    image[list(lost)] = np.nan
    vis[list(lost)] = 0
    return Landmarks(world, image, vis, m.fps, size, "known.mp4")


# tolerances of the descriptors recovered from the landmarks, against the clip's own (absolute, in their units)
# (1 cm world noise, 1 px image noise, 3 % of joints dropped, 4 frames lost: the recovered values fall within a
# quarter to a half of these)
TOLERANCE = {"travel_speed": 0.05, "speed": 0.05, "trunk_lean": 1.0, "head_pitch": 1.5, "hand_height": 0.02,
             "hand_spread": 0.02, "step_frequency": 0.15, "stride_length": 0.05, "vertical_bounce": 0.005,
             "arm_swing": 0.02, "expansiveness": 0.03}


def descriptors(m: Motion) -> dict:
    u = unify(m)
    return {k: v["value"] for k, v in describe(u.metres(), u.mask, u.fps).items()}


def test_landmarks_of_known_motion_give_its_descriptors_back():
    m = walk_across()
    lm = as_mediapipe(m, np.random.default_rng(0))
    got = landmarks_to_motion(lm)
    want, back = descriptors(m), descriptors(got)
    off = {k: (round(back[k], 3), round(want[k], 3)) for k, tol in TOLERANCE.items() if abs(back[k] - want[k]) > tol}
    assert not off, f"descriptors off (got, want): {off}"
    assert want["travel_speed"] > 1.0  # the clip travels: root restoration is what the test checks
    assert got.meta["filled_frames"] == 4 and got.meta["filled_samples"] > 0  # the lost frames and dropped joints
    # the pelvis goes back where the camera saw it: 4.8 m along x at the same depth
    pelvis = got.positions[:, [IDX["left_hip"], IDX["right_hip"]]].mean(axis=1)
    travel = pelvis[-1] - pelvis[0]
    true = m.positions[-1, [IDX["left_hip"], IDX["right_hip"]]].mean(0) - m.positions[0, [IDX["left_hip"],
                                                                                         IDX["right_hip"]]].mean(0)
    np.testing.assert_allclose(travel, true, atol=0.08)


def test_root_travel_comes_from_the_image():
    """Without the image hip track (every frame's image the first one's) the travel is lost: the check can fail."""
    m = walk_across()
    lm = as_mediapipe(m, np.random.default_rng(0))
    lm.image[:] = lm.image[0]
    assert descriptors(landmarks_to_motion(lm))["travel_speed"] < 0.3


def test_no_person_is_a_clear_error():
    m = walk_across(1.0)
    lm = as_mediapipe(m, np.random.default_rng(0), lost=range(30))
    with pytest.raises(EaiError, match="no person found"):
        landmarks_to_motion(lm)


@pytest.mark.parametrize("layout", ["mediapipe33", "coco17"])
def test_upright_head_reads_level(layout):
    """An upright standing body with its face where MediaPipe puts it: head pitch near 0 (the nose as the head
    would read about 30 degrees lowered)."""
    P = generate("neutral", 2.0, content="stand", seed=4)
    m = with_face(express(P, MP, 30.0))
    truth = descriptors(express(P, registry().get("gait16"), 30.0))["head_pitch"]  # the generated head
    if layout == "coco17":
        coco = registry().get(layout)
        m = Motion(m.positions[:, [IDX[n] for n in coco.joints]], list(coco.joints), list(coco.parents), 30.0)
    d = descriptors(m)
    assert abs(truth) < 6 and abs(d["head_pitch"] - truth) < 1.5 and abs(d["trunk_lean"]) < 4
    nose = m.positions.copy()
    ears = [list(m.joints).index(n) for n in ("left_ear", "right_ear")]
    nose[:, ears] = m.positions[:, [list(m.joints).index("nose")]]  # the old mapping: the nose stands for the head
    assert descriptors(Motion(nose, m.joints, m.parents, 30.0))["head_pitch"] > 20


def test_video_without_the_extra_names_it(tmp_path, monkeypatch, capsys):
    real = builtins.__import__

    def no_mediapipe(name, *a, **k):
        if name.split(".")[0] in ("mediapipe", "cv2"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    v = tmp_path / "person.mp4"
    v.write_bytes(b"\x00" * 64)
    assert main(["pose", str(v), "--out", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eai[video]" in err[0] and "make video" in err[0]


# --- the real clip (needs the extra) ----------------------------------------------------------------------

def _need_extra():
    try:
        import cv2  # noqa: F401
        import mediapipe  # noqa: F401
    except ImportError:
        if os.environ.get("EAI_REQUIRE_VIDEO"):
            raise
        pytest.skip("the extra 'video' is not installed (make video)")
    if not CLIP.is_file():
        pytest.skip(f"{CLIP} not present")


@pytest.fixture(scope="module")
def handed():
    _need_extra()
    from eai.io.video import read_video

    return read_video(CLIP, progress=False)


BONES = {"left thigh": ("left_hip", "left_knee"), "left shin": ("left_knee", "left_ankle"),
         "right thigh": ("right_hip", "right_knee"), "right shin": ("right_knee", "right_ankle")}
MAX_BONE_CV = 0.08  # MediaPipe estimates each frame anew (no fixed bone lengths): 3-5 % here; a joint mix-up,
# a left-right swap or a per-frame scale error gives 15 % and more


def test_handed_clip_is_a_steady_upright_skeleton(handed):
    m = handed
    assert m.layout == "mediapipe33" and m.fps == 20 and m.n_frames == 102 and m.meta["pose_fps"] > 0
    j = list(m.joints)
    cv = {}
    for name, (a, b) in BONES.items():
        L = np.linalg.norm(m.positions[:, j.index(a)] - m.positions[:, j.index(b)], axis=1)
        cv[name] = float(L.std() / L.mean())
        assert 0.3 < L.mean() < 0.55, (name, L.mean())  # an adult's thigh and shin, in metres
    print("bone length CV", {k: round(v, 4) for k, v in cv.items()})
    assert max(cv.values()) < MAX_BONE_CV, cv
    d = descriptors(m)
    print("trunk lean", d["trunk_lean"], "head pitch", d["head_pitch"])
    assert abs(d["trunk_lean"]) < 6  # he stands upright
    head = m.positions[:, [j.index("left_ear"), j.index("right_ear")]].mean(1)
    feet = m.positions[:, [j.index("left_ankle"), j.index("right_ankle")]].mean(1)
    assert (head[:, 1] - feet[:, 1]).min() > 1.2  # y up, head well above the feet


def test_eai_pose_and_explain_on_the_handed_clip(handed, tiny_run, tmp_path, capsys):
    out = tmp_path / "clip.npz"
    assert main(["pose", str(CLIP), "--out", str(out), "--quiet"]) == 0
    assert "frames/s" in capsys.readouterr().out
    assert main(["explain", str(CLIP), "--model", str(tiny_run)]) == 0
    text = capsys.readouterr().out
    assert "emotion" in text and "explanation" in text
    assert main(["explain", str(CLIP), "--model", str(tiny_run), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["emotion"] in row["probabilities"] and abs(sum(row["probabilities"].values()) - 1) < 1e-3
    assert row["emotion"] == max(row["probabilities"], key=row["probabilities"].get)
    assert row["explanation"].strip() and all(isinstance(e["verified"], bool) for e in row["evidence"])
    assert row["label_consistent"] in (True, False)


def test_several_people_follow_the_largest_and_say_so(handed, tmp_path):
    """The handed clip beside a smaller mirrored copy of itself: two people; the larger one is followed all along
    (its hips never jump to the other's place, 0.75 of the frame away) and the notes and a warning say so."""
    import cv2

    from eai.io.video import read_video

    cap, frames = cv2.VideoCapture(str(CLIP)), []
    while (got := cap.read())[0]:
        frames.append(got[1])
    two = tmp_path / "two.mp4"
    w = cv2.VideoWriter(str(two), cv2.VideoWriter_fourcc(*"mp4v"), 20, (1200, 600))
    for f in frames:
        small = np.full_like(f, 255)
        small[150:, 75:525] = cv2.resize(f[:, ::-1], (450, 450))  # the copy at three quarters of the size
        w.write(np.concatenate([f, small], axis=1))
    w.release()
    with pytest.warns(UserWarning, match="several people"):
        m = read_video(two, progress=False)
    note = [n for n in m.meta["notes"] if n.startswith("several people")]
    assert note and "up to 2 in a frame" in note[0] and "largest" in note[0]
    j = list(m.joints)
    hips = m.positions[:, [j.index("left_hip"), j.index("right_hip")]].mean(axis=1)
    alone = handed.positions[:, [j.index("left_hip"), j.index("right_hip")]].mean(axis=1)
    assert np.ptp(hips[:, 0]) < np.ptp(alone[:, 0]) + 0.3  # the same travel as alone: never the other person
