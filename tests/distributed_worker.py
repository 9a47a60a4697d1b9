"""One process of tests/test_distributed.py, started by `accelerate launch`: trains the encoder on the windows of
the dataset at argv[1] and writes into folder argv[2] what this process saw and ended with; with argv[3] ==
"kill", the main process dies after its first checkpoint (the launcher then stops the other)."""
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

import eai.train.encoder as loop
from eai.data.datasets import load_clips, open_dataset
from eai.data.windows import window_set
from eai.encoder import EncoderConfig
from eai.schedules import ENCODER_SCHEDULES

data, out = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])  # set by the launcher (eai's Accelerator makes accelerate's state, on the CPU)
draws, batches, saves = [], [], []
shard, save = loop.shard_batches, loop.save_checkpoint


def spy_shard(order, batch, r, world):  # the epoch's draw, and the windows this process trains on
    draws.append(order.tolist())
    batches.append([])
    for idx in shard(order, batch, r, world):
        batches[-1].append(idx.tolist())
        yield idx


def spy_save(path, rng, **state):
    saves.append(state["epoch"])
    save(path, rng, **state)
    if sys.argv[3:] == ["kill"]:
        os._exit(3)


loop.shard_batches, loop.save_checkpoint = spy_shard, spy_save
clips = load_clips(open_dataset(data), progress=False)
labels = sorted({c.label for c in clips})
ws = window_set(clips, labels, 60, 15, descriptors=True)
cfg = dataclasses.replace(ENCODER_SCHEDULES["smoke"], epochs=2, warmup=1, milestones=[1], batch=16)
model, history = loop.train_encoder(ws, len(labels), cfg, EncoderConfig(channels=[16, 16, 32, 32], strides=[1, 2, 1, 2]),
                                    checkpoint=out / "checkpoint.pt", progress=False)
torch.save(model.state_dict(), out / f"weights-{rank}.pt")
(out / f"seen-{rank}.json").write_text(json.dumps({"world": int(os.environ["WORLD_SIZE"]), "draws": draws,
                                                   "batches": batches, "saves": saves, "history": history}))
