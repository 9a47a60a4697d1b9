"""How low temperature scaling can bring the held-out ECE of a `bench llm` folder's folds, for both models.

Each fold's run (a folder `eai bench llm` wrote) scores its held-out clips as its held-out figures do
(eai.interpret.Interpreter.recognition_proba: the LLM by label likelihood, mirror-averaged, and the encoder's own
head, before temperature scaling), and every fold's windows are pooled as `bench llm` pools them (10 bins). The
pooled ECE is then read under four temperatures per model:

- `fitted`: each run's own temperature, fitted on its training windows (what `bench llm` reports);
- `none`: T = 1;
- `best single T`: the one temperature for every fold that minimises the pooled ECE, chosen on the held-out windows
  themselves: no temperature fitted without them, shared by the folds, can read lower;
- `per-fold oracle`: each fold's own T minimising the NLL of its held-out windows (Guo et al. 2017's fit, on the
  test windows): what a temperature could read if it knew each fold's difficulty.

The last two look at the test labels: they are bounds, not methods. When `best single T` is above a target, no
temperature fitted on training windows reaches it on these folds; the gap between the two bounds is what the folds'
differing difficulty costs.

With `--refit-k K` the encoder's temperature is also fitted on a new cross-fitting of each run's training windows
with K folds (eai.train.crossfit.out_of_fold_posterior, from the run's own starting weights and schedule, not
cached; a run's own is K = 3): `refit` in the table, and the out-of-fold accuracy beside the run's. The LLM's
temperature would need the LLM stages' tokens from those posteriors too, so it is not refitted.
    python bench/bench_calibration_floor.py --runs runs/bench-llm-d0 --data ../shared/data/bandai-namco-1 \
        [--refit-k 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BINS = 10  # bench llm's pooled ECE (eai.metrics.pooled_ece over 10-bin reliability diagrams)


def main() -> None:
    from scipy.optimize import minimize_scalar

    from eai.calibration import LOG_T, fit_temperature, scale_proba
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter
    from eai.metrics import expected_calibration_error

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, help="a bench llm folder (seed-S-fold-I run folders)")
    ap.add_argument("--data", required=True, help="the dataset the folds were trained on")
    ap.add_argument("--refit-k", type=int, help="also fit the encoder's temperature on K cross-fitted encoders")
    ap.add_argument("--json")
    args = ap.parse_args()
    folds = sorted(p for p in Path(args.runs).glob("seed-*-fold-*") if (p / "manifest.json").is_file())
    if not folds:
        raise SystemExit(f"no fold runs in {args.runs}")
    clips = load_clips(open_dataset(args.data), progress=False)
    raw = {"llm": [], "encoder": []}
    ys, fitted, names, refit = [], {"llm": [], "encoder": []}, [], []
    for run in folds:
        it = Interpreter.load(run)
        d = it.run.manifest.datasets[0]
        held = [u for u in clips if u.group in set(d.held_out_groups)]
        ws, _, p = it.recognition_proba(held, d)
        for k in raw:
            raw[k].append(p[k])
            fitted[k].append(getattr(it.calibration, k))
        ys.append(ws.y)
        names.append(run.name)
        print(f"{run.name}: {len(held)} clips, {len(ws.y)} windows", flush=True)
        if args.refit_k:
            refit.append(refit_encoder_temperature(run, it.run, [u for u in clips if u.group not in set(d.held_out_groups)], args.refit_k))
            print(f"  K = {args.refit_k}: out-of-fold accuracy {refit[-1]['oof_accuracy']:.3f} (the run's K = 3: "
                  f"{refit[-1]['run_oof_accuracy']:.3f}), encoder temperature {refit[-1]['temperature']:.3f} "
                  f"(the run's {fitted['encoder'][-1]:.3f})", flush=True)
    y = np.concatenate(ys)

    def pooled(k: str, ts: list[float]) -> float:
        return expected_calibration_error(np.concatenate([scale_proba(p, t) for p, t in zip(raw[k], ts)]), y, BINS)

    def log(p: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.where(p > 0, np.log(np.clip(p, 1e-300, None)), -np.inf)

    out = {"runs": str(args.runs), "folds": names, "windows": int(len(y)), "bins": BINS, "models": {}}
    rows = []
    for k in raw:
        best = minimize_scalar(lambda lt: pooled(k, [float(np.exp(lt))] * len(folds)), bounds=LOG_T, method="bounded")
        oracle = [fit_temperature(log(p), yy) for p, yy in zip(raw[k], ys)]
        acc = float(np.mean(np.concatenate([p.argmax(1) for p in raw[k]]) == y))
        r = {"accuracy": acc,
             "fitted": {"temperatures": fitted[k], "ece": pooled(k, fitted[k])},
             "none": {"ece": pooled(k, [1.0] * len(folds))},
             "best_single_t": {"temperature": float(np.exp(best.x)), "ece": float(best.fun)},
             "per_fold_oracle": {"temperatures": oracle, "ece": pooled(k, oracle)},
             "per_fold_accuracy": [float(np.mean(p.argmax(1) == yy)) for p, yy in zip(raw[k], ys)]}
        if refit and k == "encoder":
            ts = [f["temperature"] for f in refit]
            r["refit"] = {"k": args.refit_k, "temperatures": ts, "ece": pooled(k, ts), "folds": refit}
        out["models"][k] = r
        rows.append(f"{k:8s} {acc:6.3f}  {r['fitted']['ece']:7.3f}  {r['none']['ece']:6.3f}  "
                    f"{r['best_single_t']['ece']:6.3f} (T {r['best_single_t']['temperature']:.2f})  "
                    f"{r['per_fold_oracle']['ece']:6.3f}")
    print(f"pooled ECE over {len(y)} held-out windows of {len(folds)} folds ({BINS} bins)")
    print("model    acc.    fitted     T=1    best single T (on test)   per-fold oracle (on test)")
    print("\n".join(rows))
    if refit:
        r = out["models"]["encoder"]["refit"]
        print(f"encoder, temperatures fitted on {args.refit_k} cross-fitted encoders per run: pooled ECE {r['ece']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def refit_encoder_temperature(folder: Path, run, train_clips: list, k: int) -> dict:
    """The encoder temperature of run `run` (in `folder`) fitted on the out-of-fold posteriors of `k` encoders
    cross-fitted on its training clips as eai.train.llm_run cross-fits them, with their out-of-fold accuracy and
    that of the run's own cross-fitting (its crossfit.safetensors)."""
    from safetensors.numpy import load_file

    from eai.calibration import fit_temperature
    from eai.data.joint import label_mask
    from eai.data.windows import WindowSet, window_set
    from eai.train.crossfit import CROSSFIT, _key, out_of_fold_posterior
    from eai.train.encoder_run import initial_weights

    m = run.manifest
    every = WindowSet.concat([window_set(train_clips, m.labels, m.train.window, m.train.train_stride,
                                         descriptors=True)], dataset_idx=[0])
    oof = out_of_fold_posterior(every, len(m.labels), m.train, m.encoder, label_mask(m.datasets, m.labels),
                                lambda: initial_weights(folder, m.config.init, m.pretrain), k=k, seed=m.config.seed,
                                progress=False)
    own = load_file(str(folder / CROSSFIT))
    if bytes(own["key"]).decode() != _key(every, 3, m.config.seed):
        raise SystemExit(f"{folder}: these training windows are not the ones its cross-fitting read")
    own = own["posterior"]
    logp = np.log(np.clip(oof, 1e-12, None)) + np.where(oof > 0, 0, -np.inf)
    return {"temperature": fit_temperature(logp, every.y), "oof_accuracy": float(np.mean(oof.argmax(1) == every.y)),
            "run_oof_accuracy": float(np.mean(own.argmax(1) == every.y))}


if __name__ == "__main__":
    main()
