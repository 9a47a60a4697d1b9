r"""How low temperature scaling can bring the held-out ECE of a `bench llm` folder's folds, for both models.

Each fold's run (a folder `eai bench llm` wrote, seed-S-fold-I) scores its held-out clips as its held-out figures do
(eai.interpret.Interpreter.recognition_proba: the LLM by label likelihood, mirror-averaged, and the encoder's own
head, before temperature scaling), its window and clip counts checked against the run's stored figures, and every
fold's windows are pooled as `bench llm` pools them (eai.metrics.pooled_ece over 10-bin reliability diagrams; the
stored figure is printed beside the re-scored one: the run was scored by the training-time model, this by the
loaded, merged one). The pooled ECE is read under:

- `fitted`: each run's own temperature, fitted on its training windows (what `bench llm` reports);
- `T = 1`;
- `best shared T`: the one temperature for every fold with the lowest pooled ECE, found on a grid of log T over
  eai.calibration.LOG_T (step 0.005) and chosen on the held-out windows themselves. It looks at the test labels, so
  it is optimistic: no temperature shared by the folds reads lower (up to the grid), but the runs fit one per fold,
  and those can;
- `per-fold NLL T`: each fold's temperature minimising the NLL of its own held-out windows (Guo et al. 2017's fit, on
  the test labels): NLL-optimal, not ECE-optimal; a reference, not a bound (it can read above `best shared T`).

With `--refit-k K` the encoder's temperature is also fitted on a new cross-fitting of each run's training windows
with K folds (eai.train.crossfit.out_of_fold_posterior from the run's own starting weights and schedule, as
eai.train.llm_run.fit_calibration fits it; not cached). That trains K encoders per fold: about 25 minutes for five
Bandai folds and K = 5 on two cores. Before any training, each run's cached cross-fitting (its crossfit.safetensors)
must be the one these windows give, and the temperature fitted on it must be the run's. The LLM's temperature would
need LLM stages trained on posterior tokens from the new cross-fitting, so it is not refitted.
The JSON (`--json`): per model (`models.llm`, `models.encoder`) the pooled `accuracy` and `per_fold_accuracy`, and
per reading (`fitted` with the runs' `stored_ece`, `t1`, `best_shared_t` with `below_0.05`: the lowest and highest
grid T reading at most 0.05, or null; `per_fold_nll_t`, `refit`) its `ece` and temperature(s); `refit.folds[].k` is
the number of folds each run was cross-fitted with (fewer than asked where a label has fewer clips).
    python bench/bench_calibration_floor.py --runs runs/bench-llm-d0 [--folds 5] [--seeds 1] [--data DIR] \
        [--refit-k 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BINS = 10  # bench llm's pooled ECE


def main() -> None:
    from eai.calibration import LOG_T, fit_temperature, log_posterior, scale_proba
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter
    from eai.metrics import pooled_ece, reliability
    from eai.run import MANIFEST

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="the --out folder of `eai bench llm` (its seed-S-fold-I runs)")
    ap.add_argument("--folds", type=int, default=5, help="the --folds it ran with (>= 1)")
    ap.add_argument("--seeds", type=int, default=1, help="the --seeds it ran with (>= 1)")
    ap.add_argument("--data", help="the dataset, where it is no longer at the path the runs recorded")
    ap.add_argument("--refit-k", type=int, help="also fit the encoder's temperature on K cross-fitted encoders")
    ap.add_argument("--json", help="write every figure, temperatures included, to this file")
    args = ap.parse_args()
    if args.folds < 1 or args.seeds < 1:
        ap.error("--folds and --seeds are at least 1")
    if not Path(args.runs).is_dir():
        ap.error(f"{args.runs}: no such folder; give the --out folder of `eai bench llm`")
    folds = [Path(args.runs) / f"seed-{s}-fold-{i}" for s in range(args.seeds) for i in range(args.folds)]
    missing = [str(f) for f in folds if not (f / MANIFEST).is_file()]
    if missing:
        ap.error(f"{len(missing)} of the {len(folds)} folds asked for are not finished bench llm runs (the first: "
                 f"{missing[0]}); give the --out folder of `eai bench llm` and the --folds and --seeds it ran with")
    read: dict[tuple, list] = {}  # (dataset path, task): its clips, read once for every fold
    raw, stored = {"llm": [], "encoder": []}, {"llm": [], "encoder": []}
    ys, fitted, refit = [], {"llm": [], "encoder": []}, []
    for run in folds:
        it = Interpreter.load(run)
        m = it.run.manifest
        d = m.datasets[0]
        key = (args.data or d.path, m.task)
        if key not in read:
            read[key] = load_clips(open_dataset(*key), progress=False)
        out_groups = set(d.held_out_groups)
        held = [u for u in read[key] if u.group in out_groups]
        ws, _, p = it.recognition_proba(held, d)
        h = m.held_out_llm_of(d.name)
        if (len(ws.y), len(held)) != (h["windows"], h["clips"]):
            raise SystemExit(f"{run}: {len(held)} clips and {len(ws.y)} windows read from {key[0]}, but the run "
                             f"held out {h['clips']} and {h['windows']}: another dataset (give --data)")
        for k in raw:
            raw[k].append(p[k])
            fitted[k].append(getattr(it.calibration, k))
            stored[k].append(h[k]["reliability"]["calibrated"])
        ys.append(ws.y)
        print(f"{run.name}: {len(held)} clips, {len(ws.y)} windows", flush=True)
        if args.refit_k:
            train = [u for u in read[key] if u.group not in out_groups]
            refit.append(refit_encoder_temperature(run, it.run, train, args.refit_k))
            f = refit[-1]
            print(f"  K = {f['k']}: out-of-fold accuracy {f['oof_accuracy']:.3f} (the run's K = 3: "
                  f"{f['run_oof_accuracy']:.3f}), encoder temperature {f['temperature']:.3f} (the run's "
                  f"{fitted['encoder'][-1]:.3f})", flush=True)

    def pooled(k: str, ts: list[float]) -> float:
        return pooled_ece([reliability(scale_proba(q, t), y, BINS) for q, t, y in zip(raw[k], ts, ys)], BINS)

    grid = np.exp(np.arange(LOG_T[0], LOG_T[1] + 1e-9, 0.005))
    n = len(folds)
    out = {"runs": str(args.runs), "folds": [f.name for f in folds], "windows": int(sum(map(len, ys))), "bins": BINS,
           "models": {}}
    rows = []
    for k in raw:
        curve = np.array([pooled(k, [t] * n) for t in grid])
        best = int(np.argmin(curve))
        nll = [fit_temperature(log_posterior(q), y) for q, y in zip(raw[k], ys)]
        r = {"accuracy": float(np.mean(np.concatenate([q.argmax(1) == y for q, y in zip(raw[k], ys)]))),
             "fitted": {"temperatures": fitted[k], "ece": pooled(k, fitted[k]), "stored_ece": pooled_ece(stored[k])},
             "t1": {"ece": pooled(k, [1.0] * n)},
             "best_shared_t": {"temperature": float(grid[best]), "ece": float(curve[best]),
                               "below_0.05": [float(grid[curve <= 0.05].min()), float(grid[curve <= 0.05].max())]
                               if (curve <= 0.05).any() else None},
             "per_fold_nll_t": {"temperatures": nll, "ece": pooled(k, nll)},
             "per_fold_accuracy": [float(np.mean(q.argmax(1) == y)) for q, y in zip(raw[k], ys)]}
        if refit and k == "encoder":
            ts = [f["temperature"] for f in refit]
            r["refit"] = {"k": args.refit_k, "temperatures": ts, "ece": pooled(k, ts), "folds": refit}
        out["models"][k] = r
        band = r["best_shared_t"]["below_0.05"]
        rows.append(f"{k:8s} {r['accuracy']:5.3f}  {r['fitted']['ece']:6.3f} ({r['fitted']['stored_ece']:.3f})  "
                    f"{r['t1']['ece']:5.3f}  {curve[best]:6.3f} at T {grid[best]:.2f} "
                    f"({'T %.2f-%.2f' % tuple(band) if band else 'none'})  {r['per_fold_nll_t']['ece']:6.3f}")
    print(f"pooled ECE over {out['windows']} held-out windows of {n} folds ({BINS} bins)")
    print("model    acc.   fitted (stored)  T=1    best shared T, on test (grid T reading <= 0.05: lowest-highest)   "
          "per-fold NLL T, on test")
    print("(acc.: window accuracy pooled over the folds' windows; bench llm's table averages the folds instead)")
    print("\n".join(rows))
    if refit:
        r = out["models"]["encoder"]["refit"]
        print(f"encoder, temperatures fitted on {args.refit_k} cross-fitted encoders per run: pooled ECE {r['ece']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def refit_encoder_temperature(folder: Path, run, train_clips: list, k: int) -> dict:
    """The encoder temperature of run `run` (in `folder`) fitted on the out-of-fold posteriors of `k` encoders
    cross-fitted on its training clips as eai.train.llm_run cross-fits them, with the number of folds used (fewer
    where a label has fewer clips), their out-of-fold accuracy and that of the run's own cross-fitting. SystemExit
    when the run's cached cross-fitting is not the one these windows give, or its temperature not the run's."""
    from eai.calibration import fit_temperature, log_posterior
    from eai.data.joint import label_mask
    from eai.data.windows import WindowSet, window_set
    from eai.train.crossfit import CROSSFIT, folds_used, out_of_fold_posterior
    from eai.train.encoder_run import initial_weights

    m = run.manifest
    every = WindowSet.concat([window_set(train_clips, m.labels, m.train.window, m.train.train_stride,
                                         descriptors=True)], dataset_idx=[0])
    allowed = label_mask(m.datasets, m.labels)

    def not_cached():
        raise SystemExit(f"{folder}: its {CROSSFIT} was not made on these training windows")

    # the run's own cross-fitting (the default k, 3), read from its cache; training there means other windows
    own = out_of_fold_posterior(every, len(m.labels), m.train, m.encoder, allowed, not_cached, seed=m.config.seed,
                                cache=folder / CROSSFIT, progress=False)
    if not np.isclose(fit_temperature(log_posterior(own), every.y), m.calibration.encoder, rtol=1e-6):
        raise SystemExit(f"{folder}: the temperature fitted on its cross-fitting is not the run's")
    oof = out_of_fold_posterior(every, len(m.labels), m.train, m.encoder, allowed,
                                lambda: initial_weights(folder, m.config.init, m.pretrain), k=k, seed=m.config.seed,
                                progress=False)
    return {"k": folds_used(every, k), "temperature": fit_temperature(log_posterior(oof), every.y),
            "oof_accuracy": float(np.mean(oof.argmax(1) == every.y)),
            "run_oof_accuracy": float(np.mean(own.argmax(1) == every.y))}


if __name__ == "__main__":
    main()
