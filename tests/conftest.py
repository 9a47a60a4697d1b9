import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# the tests' prompt-stem caches (eai.llm.stems) stay out of the user's cache
os.environ.setdefault("EAI_STEM_CACHE", tempfile.mkdtemp(prefix="eai-stems-"))
# and so do runs' merged backbones (eai.llm.builder.merged_cache_root: 0.4 GB a bundled run)
os.environ.setdefault("EAI_MERGED_CACHE", tempfile.mkdtemp(prefix="eai-merged-"))
# OpenMP threads sleep when idle, as the command line sets it: spinning threads slow a busy machine several times
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SHARED = Path(os.environ.get("EAI_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BANDAI = SHARED / "data" / "bandai-namco-1"


@pytest.fixture(scope="session")
def bandai():
    if not (BANDAI / "cfg" / "style_label.txt").is_file():
        pytest.skip("../shared/data/bandai-namco-1 not present")
    return BANDAI


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small generated dataset in three layouts and three formats."""
    from eai.data.synth import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, ["bandai22", "kinect25", "gait16"], clips_per_label=6, seconds=5.0)
    return out


def _known_motion(T=30):
    """A stick figure standing at (3, 0, -2) facing +x, 1 m from ankle to head along the skeleton (gait16)."""
    from eai.motion import Motion
    from eai.skeleton.registry import registry

    layout = registry().get("gait16")
    pos = {"root": (0, 0.5, 0), "spine": (0, 0.6, 0), "neck": (0, 0.8, 0), "head": (0, 0.9, 0),
           "left_hip": (0, 0.5, -0.1), "right_hip": (0, 0.5, 0.1), "left_knee": (0, 0.25, -0.1),
           "right_knee": (0, 0.25, 0.1), "left_foot": (0, 0.0, -0.1), "right_foot": (0, 0.0, 0.1),
           "left_shoulder": (0, 0.8, -0.15), "right_shoulder": (0, 0.8, 0.15), "left_elbow": (0, 0.65, -0.2),
           "right_elbow": (0, 0.65, 0.2), "left_hand": (0, 0.5, -0.2), "right_hand": (0, 0.5, 0.2)}
    P = np.array([pos[j] for j in layout.joints], np.float32) + np.array([3, 0, -2], np.float32)
    return Motion(np.repeat(P[None], T, 0), list(layout.joints), list(layout.parents), 25.0)


@pytest.fixture
def known_motion():
    """known_motion(T=30): a stick figure of known joint positions (see _known_motion)."""
    return _known_motion


def _full_batch(llm, prompts, answers):
    """The reference path of EmotionLLM's training rows: whole rows (prompt, answer, end of turn) right-padded,
    without prefix sharing: input_ids, attention_mask, labels (IGNORE on the prompt)."""
    import torch

    from eai.llm.prompts import IGNORE

    rows, labs = llm._rows(prompts, answers)
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), llm.pad, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    lab = torch.full((len(rows), L), IGNORE, dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labs)):
        ids[i, :len(r)], att[i, :len(r)], lab[i, :len(r)] = torch.tensor(r), 1, torch.tensor(l)
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


@pytest.fixture
def full_batch():
    """full_batch(llm, prompts, answers): EmotionLLM's training rows without prefix sharing (_full_batch)."""
    return _full_batch


def _smoke_run(data, out, **kw):
    """The RunConfig of a run of every stage on the smoke schedules and the tiny test backbone."""
    from eai.llm.backbone import TINY
    from eai.run import RunConfig

    data = [str(d) for d in data] if isinstance(data, (list, tuple)) else [str(data)]
    return RunConfig(data=data, out=str(out), stage="all", schedule="smoke", llm_schedule="smoke",
                     backbone=kw.pop("backbone", TINY), **kw)


@pytest.fixture(scope="session")
def tiny_run(synth_dir, tmp_path_factory):
    """A run of every stage on the tiny test backbone (smoke schedules), shared by the LLM and viewer tests."""
    from eai.train.llm_run import train_run

    out = tmp_path_factory.mktemp("llmrun") / "run"
    train_run(_smoke_run(synth_dir, out), progress=False)
    return out


@pytest.fixture
def smoke_run():
    """smoke_run(data, out, **overrides): the RunConfig of a smoke run of every stage (_smoke_run)."""
    return _smoke_run


@pytest.fixture
def figures(monkeypatch):
    """Every figure eai.report saves, by file name: (its title, its axes' line labels, its axes' tick labels)."""
    seen = {}

    def capture(fig, path, dpi=110):
        import matplotlib.pyplot as plt

        title = fig._suptitle.get_text() if fig._suptitle is not None else ""
        lines = [ln.get_label() for ax in fig.axes for ln in ax.get_lines()]
        ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
        seen[str(path).rsplit("/", 1)[-1]] = (title, lines, ticks)
        plt.close(fig)

    import eai.report

    monkeypatch.setattr(eai.report, "save_figure", capture)
    return seen


def write_bandai_like(out: Path, clips_per_label: int = 3, seconds: float = 3.0,
                      emotions=("happy", "sad", "angry")) -> Path:
    """A small generated dataset in the Bandai layout (cfg/style_label.txt, cfg/content_label.txt,
    data/<clip>.bvh with a JSON label file each): styles are the emotions, contents walk and stand."""
    import json
    import shutil

    from eai.data.synth import write_dataset

    src = out / "src"
    files = write_dataset(src, ["bandai22"], clips_per_label=clips_per_label, seconds=seconds,
                          emotions=list(emotions))
    (out / "cfg").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    contents = ["walk", "stand"]
    (out / "cfg" / "style_label.txt").write_text("\n".join(f"dataset-x_{e}" for e in emotions))
    (out / "cfg" / "content_label.txt").write_text("\n".join(f"dataset-x_{c}" for c in contents))
    for i, f in enumerate(files):
        style, content = f.parent.name, f.name.split("_")[0]
        stem = f"dataset-x_{content}_{style}_{i:03d}"
        shutil.copy(f, out / "data" / f"{stem}.bvh")
        (out / "data" / f"{stem}.json").write_text(json.dumps({"content": contents.index(content),
                                                               "style": list(emotions).index(style)}))
    shutil.rmtree(src)
    return out


@pytest.fixture
def bandai_like(tmp_path):
    """A small generated dataset in the Bandai layout (write_bandai_like)."""
    return write_bandai_like(tmp_path / "bandai-like")
