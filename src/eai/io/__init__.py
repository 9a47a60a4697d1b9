"""Readers and writers: every format gives the same `Motion`."""
from __future__ import annotations

from pathlib import Path

from eai.errors import FormatError
from eai.motion import Motion

READ_SUFFIXES = (".bvh", ".csv", ".txt", ".npz", ".pkl", ".pickle")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")  # MediaPipe Pose: the extra 'video'

WRITE_SUFFIXES = (".npz", ".bvh", ".csv")


def read_motion(path: str | Path, units: str | float = "auto", trust_pickle: bool = False,
                up: str = "auto") -> Motion:
    """Read one clip by file extension (.bvh, .csv/.txt Kinect v2, .npz, .pkl PYSKL: its first clip; a video,
    .mp4 .mov .avi .mkv .webm .m4v, through MediaPipe Pose: eai.io.video, with a progress bar on a terminal).

    units: BVH length unit (metres per file unit, a unit name, or auto); up: the file's up axis (y, z, -y,
    ...) or auto, told from the body; the clip comes back y up. What a reader told or repaired is in
    `motion.meta['notes']`.
    """
    from eai.io.body import settle_up
    from eai.io.bvh import read_bvh
    from eai.io.kinect import read_kinect_csv
    from eai.io.npz import read_npz
    from eai.io.pyskl import read_pyskl

    if Path(path).is_dir():
        raise FormatError("this is a folder, not a motion file; 'eai data DIR' describes a dataset, "
                          "'eai explain DIR' explains every motion file in it", path)
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:  # MediaPipe's axes and metres are known: units and up do not apply
        from eai.io.video import read_video

        return read_video(path)
    if suffix == ".bvh":
        return read_bvh(path, units=units, up=up)
    if suffix in (".csv", ".txt"):
        m = read_kinect_csv(path)
    elif suffix == ".npz":
        m = read_npz(path)
    elif suffix in (".pkl", ".pickle"):
        m = read_pyskl(path, trust=trust_pickle)[0]
    else:
        raise FormatError(f"unknown motion format {suffix or '(no extension)'}; eai reads "
                          f"{', '.join(READ_SUFFIXES + VIDEO_SUFFIXES)}", path)
    return settle_up(m, up)


def read_motion_to_show(path: str | Path, units: str | float = "auto", trust_pickle: bool = False,
                        up: str = "auto") -> Motion:
    """`read_motion` for `eai info`: a length unit or up axis that cannot be told is said in the notes (the
    clip shown in file units, or as the file has it), not fatal, so the user sees what to pass."""
    from eai.errors import UnitError
    from eai.io.body import UpError

    untold: list[str] = []
    while True:
        try:
            m = read_motion(path, units=units, trust_pickle=trust_pickle, up=up)
            break
        except UnitError as e:
            if units == 1.0:
                raise
            units = 1.0
            untold.append(f"shown in file units: {e.message}")
        except UpError as e:
            if up == "y":
                raise
            up = "y"
            untold.append(f"shown as in the file: {e.message}")
    m.meta["notes"] = untold + m.meta.get("notes", [])
    if any(n.startswith("shown in file units") for n in untold):
        m.meta["units"] = "unknown (see the note): shown in file units"
    return m


def write_motion(motion: Motion, path: str | Path) -> None:
    """Write by extension: .npz, .bvh (positions only) with the motion's own joints; .csv (Kinect v2), the motion
    re-expressed on the Kinect joints through the canonical ones (eai.io.kinect.write_kinect_csv: joints without
    a counterpart left out, with a warning). Atomic."""
    from eai.io.bvh import write_bvh
    from eai.io.kinect import write_kinect_csv
    from eai.io.npz import write_npz

    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        write_npz(motion, path)
    elif suffix == ".bvh":
        write_bvh(motion, path)
    elif suffix == ".csv":
        write_kinect_csv(motion, path)
    else:
        raise FormatError(f"cannot write {suffix or '(no extension)'}; eai writes {', '.join(WRITE_SUFFIXES)}", path)
