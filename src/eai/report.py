"""Results for people (tables, PNG plots) and machines (JSON), written atomically. Every plot eai draws is here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eai.io.files import atomic_path, atomic_write_text


def table(rows: list[list], header: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.3f}"
    return str(c)


def write_json(obj, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def credit(attributions) -> str:
    """The attribution line of figures drawn from datasets (each one's `attribution`, once; "" for none)."""
    return "; ".join(dict.fromkeys(a for a in attributions if a))


def _title(fig, title: str, attribution: str = "") -> None:
    """A figure's title: what it shows and of which data, then the data's attribution where its licence asks."""
    import textwrap

    width = max(40, int(fig.get_figwidth() * 14))  # characters of fontsize 8 across the figure
    text = "\n".join(textwrap.fill(t, width) for part in (title, f"data: {attribution}" if attribution else "")
                     for t in part.split("\n") if t)
    if text:
        fig.suptitle(text, fontsize=8)


def plot_confusion(confusion, labels: list[str], path: str | Path, title: str = "", attribution: str = "") -> None:
    """Row-normalised confusion matrix as a PNG (rows: true label), labels as given (the dataset's own words)."""
    plt = _pyplot()
    cm = np.asarray(confusion, float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.7 * len(labels)), 1.2 + 0.6 * len(labels)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    _title(fig, title, attribution)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, Path(path).with_suffix(".png"), dpi=120)


def plot_curves(history: list[dict], path: Path, title: str = "", attribution: str = "",
                held_out: float | None = None) -> None:
    """The encoder's training curves per epoch: loss; training accuracy (augmented crops) beside held-out window
    accuracy (records with `held_out_accuracy`, measured with the running BatchNorm statistics) and `held_out`,
    the run's final held-out figure (after BatchNorm recalibration), as a point at the last epoch."""
    plt = _pyplot()
    ep = [h["epoch"] + 1 for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(ep, [h["loss"] for h in history])
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("training loss")
    ax[1].plot(ep, [h["train_accuracy"] for h in history], label="training windows (augmented)")
    held = [(h["epoch"] + 1, h["held_out_accuracy"]) for h in history if h.get("held_out_accuracy") is not None]
    if held:
        ax[1].plot(*zip(*held), marker=".", label="held-out windows")
    if held_out is not None and ep:
        ax[1].plot([ep[-1]], [held_out], "k*", markersize=9, label=f"held-out, final ({held_out:.2f})")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("window accuracy")
    ax[1].set_ylim(0, 1)
    ax[1].legend(fontsize=7)
    _title(fig, title, attribution)
    save_figure(fig, path)


def plot_pretrain_curves(history: list[dict], path: Path, title: str = "", attribution: str = "") -> None:
    """Encoder pretraining per epoch: each loss on the training windows (solid) and on the held-out clips
    (dashed); held-out style and content accuracy where the objective has labels."""
    plt = _pyplot()
    ep = [h["epoch"] + 1 for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for k in ("style", "content", "masked"):
        if any(k in h for h in history):
            line, = ax[0].plot(ep, [h.get(k) for h in history], marker=".", label=k)
            ax[0].plot(ep, [h.get(f"held_out_{k}") for h in history], "--", marker=".", color=line.get_color(),
                       label=f"{k}, held out")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].legend(fontsize=7)
    for k in ("style", "content"):
        if any(f"held_out_{k}_accuracy" in h for h in history):
            ax[1].plot(ep, [h.get(f"held_out_{k}_accuracy") for h in history], marker=".", label=f"{k}, held out")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("window accuracy")
    ax[1].set_ylim(0, 1)
    if ax[1].lines:
        ax[1].legend(fontsize=7)
    _title(fig, title, attribution)
    save_figure(fig, path)


def plot_llm_curves(history: list[dict], stages: tuple[str, ...], path: Path, title: str = "", attribution: str = "",
                    chance: float | None = None, held_out: float | None = None) -> None:
    """The LLM stages one after the other: answer-token loss per step, and held-out window accuracy of recognition
    by label likelihood at the checkpoints (records with `held_out_accuracy`) beside `chance` and `held_out`, the
    run's final figure on every held-out window (mirror-averaged), so a falling loss is not read as learning."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    offset, ends = 0, []
    for stage in stages:
        h = [r for r in history if r["stage"] == stage]
        if not h:
            continue
        ax[0].plot([offset + r["step"] for r in h], [r["loss"] for r in h], label=stage)
        acc = [(offset + r["step"], r["held_out_accuracy"]) for r in h if r.get("held_out_accuracy") is not None]
        if acc:
            ax[1].plot(*zip(*acc), marker="o", label=f"held-out, after {stage} steps")
        offset += max(r["step"] for r in h)
        ends.append(offset)
    for a in ax:
        for e in ends[:-1]:
            a.axvline(e, color="grey", lw=0.6, ls=":")
        a.set_xlabel("step (stages in order)")
    ax[0].set_ylabel("answer-token loss")
    ax[0].legend(fontsize=7)
    if chance is not None:
        ax[1].axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.2f})")
    if held_out is not None and ends:
        ax[1].plot([ends[-1]], [held_out], "k*", markersize=9, label=f"held-out, final ({held_out:.2f})")
    ax[1].set_ylabel("held-out window accuracy (LLM)")
    ax[1].set_ylim(0, 1)
    ax[1].legend(fontsize=7)
    _title(fig, title, attribution)
    save_figure(fig, path)


def plot_bars(groups: list[str], series: dict[str, tuple[list[float], list[float] | None]], path: Path,
              ylabel: str, ylim: tuple[float, float] | None = None, title: str = "") -> None:
    """Grouped bars: for each series name, (values per group, error bars or None)."""
    plt = _pyplot()
    x = np.arange(len(groups))
    n = len(series)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(1.8 + (0.5 + 0.6 * n) * len(groups), 3.4))
    for k, (name, (v, e)) in enumerate(series.items()):
        ax.bar(x + (k - (n - 1) / 2) * width, v, width, yerr=e, capsize=3 if e else 0, label=name)
    ax.set_xticks(x, groups, rotation=15 if len(groups) < 6 else 45, ha="right" if len(groups) >= 6 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if n > 1:
        ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_grid_bars(panels: dict[str, dict[str, float]], path: Path, title: str = "", cols: int = 4,
                   attribution: str = "") -> None:
    """One bar chart per panel (its title -> {bar label: value}), in a grid of `cols` columns."""
    plt = _pyplot()
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.25 * cols, 2.75 * rows), squeeze=False)
    for ax, (name, bars) in zip(axes.ravel(), panels.items()):
        ax.bar(range(len(bars)), list(bars.values()), color="tab:blue")
        ax.set_xticks(range(len(bars)), list(bars), rotation=45, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    _title(fig, title, attribution)
    save_figure(fig, path)


def plot_reliability(panels: dict[str, dict], path: str | Path, title: str = "", attribution: str = "") -> None:
    """Reliability diagrams, one panel per model: accuracy against confidence per bin before and after
    calibration (eai.metrics.reliability's dicts under 'uncalibrated' and 'calibrated', with 'ece' and
    'ece_uncalibrated' beside them); the diagonal is perfect calibration, marker area the bin's windows. Where
    the calibrated diagram has consistency draws (eai.metrics.consistency_hits), grey bars span 5-95 % of the
    accuracy a calibrated model reads in each bin, each clip's windows drawn together (Bröcker & Smith 2007)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (name, p) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        r = p["reliability"]["calibrated"]
        if r.get("consistency") and r["count"]:
            acc = np.asarray(r["consistency"]["clips"], float) / np.asarray(r["count"])
            ax.vlines(r["confidence"], *np.quantile(acc, [0.05, 0.95], axis=0), color="0.5", lw=3, alpha=0.4,
                      label="a calibrated model, 90 % of draws")
        for key, colour, ece in (("uncalibrated", "tab:orange", p["ece_uncalibrated"]),
                                 ("calibrated", "tab:blue", p["ece"])):
            r = p["reliability"][key]
            ax.plot(r["confidence"], r["accuracy"], "-o", color=colour, lw=1,
                    markersize=3, label=f"{key} (ECE {ece:.3f})")
            ax.scatter(r["confidence"], r["accuracy"], s=np.asarray(r["count"]) * 2, color=colour, alpha=0.3)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy", title=name)
        ax.legend(fontsize=7, loc="upper left")
    _title(fig, title, attribution)
    save_figure(fig, Path(path).with_suffix(".png"))
