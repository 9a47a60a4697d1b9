"""Encoder training under Accelerate with two CPU processes (`accelerate launch --multi_gpu --num_processes 2`): each
trains on its own shard of every epoch's draw, both end with the same weights, the main one alone checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _launch(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """tests/distributed_worker.py in 2 CPU processes. --multi_gpu is accelerate's multi-process (torchrun)
    launcher; without a GPU its processes join over gloo on the CPU (`--cpu` with several processes wants MPI)."""
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(Path(__file__).with_name("distributed_worker.py")), str(data), str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_share_an_epoch_end_alike_and_resume(tmp_path):
    from eai.data.synth import write_dataset

    data, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    write_dataset(data, ["bandai22"], clips_per_label=2, seconds=4.0)
    done = _launch(data, out)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((out / f"seen-{r}.json").read_text()) for r in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2]
    assert seen[0]["draws"] == seen[1]["draws"] and len(seen[0]["draws"]) == 2  # one shared draw per epoch
    for epoch, draw in enumerate(seen[0]["draws"]):
        per = [sum(s["batches"][epoch], []) for s in seen]
        assert len(seen[0]["batches"][epoch]) == len(seen[1]["batches"][epoch])  # they step together
        assert not set(per[0]) & set(per[1])  # (a) disjoint shards ...
        assert sorted(per[0] + per[1]) == sorted(draw[:len(per[0]) + len(per[1])])  # ... covering the draw
        assert per[0] == draw[0::2][:len(per[0])] and per[1] == draw[1::2][:len(per[1])]  # strided by rank
    w0, w1 = (torch.load(out / f"weights-{r}.pt") for r in (0, 1))
    for k in w0:  # (b) the same weights and BatchNorm statistics in both
        assert torch.equal(w0[k], w1[k]), k
    assert seen[0]["saves"] == [0, 1] and seen[1]["saves"] == []  # (c) the main process alone checkpoints
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    # the epoch's figures count both shards
    assert [h["windows"] for h in seen[0]["history"]] == [h["windows"] for h in seen[1]["history"]]
    # killed after the first epoch's checkpoint, then launched again: the same weights as without the kill
    again = tmp_path / "again"
    again.mkdir()
    assert _launch(data, again, "kill").returncode != 0
    assert torch.load(again / "checkpoint.pt", weights_only=False)["epoch"] == 0
    done = _launch(data, again)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((again / "seen-1.json").read_text())
    assert len(resumed["draws"]) == 1 and resumed["draws"][0] == seen[1]["draws"][1]  # only the second epoch
    for r in (0, 1):
        w = torch.load(again / f"weights-{r}.pt")
        for k in w0:
            assert torch.equal(w[k], w0[k]), (r, k)
