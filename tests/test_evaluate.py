"""`eai evaluate`: checkable clip by clip (per-file predictions in JSON and CSV), scored over the labels the data
has, confusion plots of both models in the data's own words."""
import csv
import json
import shutil

import numpy as np
import pytest


@pytest.fixture
def normal_set(synth_dir, tmp_path):
    """The generated clips as another dataset: 'neutral' spelt 'normal', no 'angry' clip."""
    data = tmp_path / "lab"
    for sub in synth_dir.iterdir():
        if sub.is_dir() and sub.name != "angry":
            shutil.copytree(sub, data / ("normal" if sub.name == "neutral" else sub.name))
    return data


def test_evaluate_gives_every_file_s_predictions_over_the_labels_present(tiny_run, normal_set, tmp_path, capsys,
                                                                         figures):
    from sklearn.metrics import f1_score

    from eai.cli import main

    out = tmp_path / "ev"
    assert main(["evaluate", str(tiny_run), "--data", str(normal_set), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "over the 6 labels present in the data; angry (no clip) not scored" in text
    r = json.loads((out / "evaluation.json").read_text())
    assert r["scope"] == "all clips" and r["labels_absent"] == ["angry"] and "normal" in r["labels_present"]
    assert "neutral" not in r["words"] and "angry" not in r["per_class_recall"]
    assert set(r["llm"]["recognition"]["llm"]["per_class_recall"]) == set(r["labels_present"])
    files = sorted(str(p) for p in normal_set.rglob("*") if p.is_file())
    assert sorted(p["file"] for p in r["predictions"]) == files == sorted(e["file"] for e in r["llm"]["examples"])
    for p in r["predictions"]:
        assert p["true"] == p["file"].split("/")[-2]  # the folder's word: "normal"
        for model in ("encoder", "llm"):
            probs = p[model]["probabilities"]
            assert list(probs) == r["words"] and abs(sum(probs.values()) - 1) < 1e-3
            assert p[model]["predicted"] == max(probs, key=probs.get)
    # the per-file answers are the clip accuracy's answers
    for model, m in (("encoder", r), ("llm", r["llm"]["recognition"]["llm"])):
        right = np.mean([p[model]["predicted"] == p["true"] for p in r["predictions"]])
        assert right == pytest.approx(m["clip_accuracy"])
    # macro-F1 over the present labels only, from the confusion matrix's windows
    cm = np.array(r["confusion"])
    y = np.repeat(np.arange(len(cm)), cm.sum(1))
    pred = np.concatenate([np.repeat(np.arange(len(cm)), row) for row in cm])
    present = [r["words"].index(w) for w in r["labels_present"]]
    assert r["macro_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    assert r["macro_f1"] != pytest.approx(f1_score(y, pred, labels=list(range(len(cm))), average="macro",
                                                   zero_division=0))
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 2 * len(files) and {x["model"] for x in rows} == {"encoder", "llm"}
    assert list(rows[0])[:5] == ["file", "true", "model", "predicted", "correct"] and list(rows[0])[5:] == r["words"]
    assert set(figures) == {"confusion-encoder.png", "confusion-llm.png", "reliability.png"}
    for name, (title, _, ticks) in figures.items():
        assert "lab" in title and (name == "reliability.png" or ticks == r["words"]), name
