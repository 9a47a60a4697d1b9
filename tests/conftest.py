import os
from pathlib import Path

import pytest

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
    from eai.synth import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, ["bandai22", "kinect25", "gait16"], clips_per_label=6, seconds=5.0)
    return out


@pytest.fixture(scope="session")
def tiny_run(synth_dir, tmp_path_factory):
    """A run of every stage on the tiny test backbone (smoke schedules), shared by the LLM and viewer tests."""
    from eai.llm.backbone import TINY
    from eai.llm.pipeline import train_all_run

    out = tmp_path_factory.mktemp("llmrun") / "run"
    train_all_run(str(synth_dir), str(out), schedule_name="smoke", llm_schedule="smoke", backbone=TINY,
                  progress=False)
    return out
