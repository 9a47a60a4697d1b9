"""Training figures that do not mislead: held-out accuracy beside the training curves (encoder per epoch, LLM at its
checkpoints), a confusion plot of the LLM, every figure titled with its dataset and the data's attribution."""
import json
import shutil


def test_bandai_data_carries_its_attribution(bandai):
    from eai.data.datasets import BANDAI_ATTRIBUTION, open_dataset

    assert "CC BY-NC 4.0" in BANDAI_ATTRIBUTION and "Kobayashi" in BANDAI_ATTRIBUTION
    assert open_dataset(bandai).attribution == BANDAI_ATTRIBUTION


def test_attribution_of_a_file_and_of_a_derived_set(synth_dir, tmp_path):
    from eai.data.datasets import open_dataset
    from eai.data.derive import derive

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    assert open_dataset(data).attribution == ""
    (data / "ATTRIBUTION.txt").write_text("\n# Test Lab motion set, CC BY 4.0\nmore text\n")
    assert open_dataset(data).attribution == "Test Lab motion set, CC BY 4.0"
    derive(str(data), str(tmp_path / "out"), progress=False)
    for sub in ("data-gait16", "data-rest"):  # an adaptation keeps the source's attribution
        got = open_dataset(tmp_path / "out" / sub).attribution
        assert got.startswith("derived from data") and got.endswith("Test Lab motion set, CC BY 4.0")


def test_encoder_curves_show_held_out_accuracy_per_epoch_and_the_attribution(synth_dir, tmp_path, figures):
    from eai.run import RunConfig
    from eai.train.encoder_run import train_encoder_run

    data = tmp_path / "lab-set"
    for label in ("happy", "neutral", "sad"):  # three labels: a quick run
        shutil.copytree(synth_dir / label, data / label)
    (data / "ATTRIBUTION").write_text("Test Lab motion set, CC BY 4.0\n")
    run = train_encoder_run(RunConfig(data=[str(data)], out=str(tmp_path / "run"), schedule="smoke", pretrain=False),
                            progress=False)
    epochs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(epochs) == 4 and all(0 <= e["held_out_accuracy"] <= 1 for e in epochs)
    title, lines, _ = figures["curves.png"]
    assert "lab-set" in title and "data: Test Lab motion set, CC BY 4.0" in title
    assert "held-out windows" in lines and any(x.startswith("held-out, final") for x in lines)


def test_llm_figures_show_held_out_accuracy_chance_and_the_llm_confusion(tiny_run, figures):
    from types import SimpleNamespace

    from eai.run import Manifest
    from eai.train.llm_run import plot_run_figures

    m = Manifest.load(tiny_run)
    (d,) = m.datasets
    for stage in ("description", "recognition"):  # held-out accuracy at the stage's checkpoints (smoke: its end)
        recs = [h for h in m.llm_training.history if h["stage"] == stage and "held_out_accuracy" in h]
        assert recs and all(0 <= h["held_out_accuracy"] <= 1 for h in recs)
    assert (tiny_run / "confusion-llm.png").is_file() and (tiny_run / "confusion-encoder.png").is_file()
    d.source = SimpleNamespace(attribution="Test Lab motion set, CC BY 4.0")
    plot_run_figures(tiny_run, m, [d])
    assert set(figures) == {"llm-curves.png", "confusion-llm.png", "confusion-encoder.png", "reliability.png"}
    for name, (title, _, _) in figures.items():
        assert d.name in title and "data: Test Lab motion set, CC BY 4.0" in title, name
    _, lines, _ = figures["llm-curves.png"]
    assert any(x.startswith("chance") for x in lines) and any(x.startswith("held-out, after") for x in lines)
    _, _, ticks = figures["confusion-llm.png"]
    assert ticks == d.words  # the dataset's own words
    assert "LLM" in figures["confusion-llm.png"][0] and "encoder" in figures["confusion-encoder.png"][0]


def test_a_finished_run_has_a_model_card_not_peft_s_template(tiny_run):
    from eai.run import Manifest

    card = (tiny_run / "llm-adapter" / "README.md").read_text()
    m = Manifest.load(tiny_run)
    (d,) = m.datasets
    assert card.startswith("---\nbase_model: tiny-random\nlibrary_name: peft\n")
    assert "More Information Needed" not in card and f"# eai emotion LLM adapter: {d.name}" in card
    h = m.held_out_llm_of(d.name)["llm"]
    assert f"| {d.name} ({m.held_out_llm_of(d.name)['clips']} clips) | llm | {h['window_accuracy']:.3f} |" in card
    assert f"rank {m.llm.lora.r}, alpha {m.llm.lora.lora_alpha}" in card
