"""Fuzz every reader through the CLI's `info` path: byte-level mutations of real files plus hypothesis-built
files of each format. Every input must end in exit 0 or a one-line exit-2 error: a crash (any other
exception) or a hang (over --timeout s) is a failure. Not part of the test suite (minutes, not seconds).

Usage:
    python bench/fuzz_readers.py [--inputs 10000] [--seed 0] [--timeout 10] [--cases ../shared/cases/readers]
Prints inputs tried, exit-0 reads, exit-2 errors, crashes, hangs and peak memory (max RSS), per reader.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

os.environ["EAI_DEBUG"] = "1"  # main re-raises what it would call an internal error: we count it
from eai.cli import main  # noqa: E402
from eai.io import write_motion  # noqa: E402
from eai.skeleton.registry import registry  # noqa: E402
from eai.data.synth import express, generate  # noqa: E402

TOKENS = [b"nan", b"inf", b"-", b"0", b"1e309", b";", b",", b"\t", b" ", b"\r\n", b"\n", b"{", b"}", b"JOINT",
          b"End Site", b"CHANNELS 3", b"Frames: 0", b"Frame Time: 0", b"\x00", b"\xff", b"Tracked", b"0,5"]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


class Tally:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.by: dict[str, Counter] = {}
        self.crashes: list[str] = []

    def run(self, reader: str, data: bytes, suffix: str, workdir: Path) -> None:
        c = self.by.setdefault(reader, Counter())
        p = workdir / f"f{suffix}"
        p.write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()) as err:
                warnings.simplefilter("ignore")
                rc = main(["--trust-pickle", "info", str(p)])
            c["ok" if rc == 0 else "error" if rc == 2 else "crash"] += 1
            if rc == 2 and err.getvalue().count("\n") != 1:
                c["multi-line error"] += 1
        except Hang:
            c["hang"] += 1
            self.keep(reader, data, suffix, "hang")
        except Exception as e:  # noqa: BLE001 - what we are here to count
            c["crash"] += 1
            self.keep(reader, data, suffix, "".join(traceback.format_exception_only(e)).strip()[:200])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        c["inputs"] += 1

    def keep(self, reader, data, suffix, what) -> None:
        out = Path("fuzz-failures")
        out.mkdir(exist_ok=True)
        f = out / f"{reader}-{len(self.crashes)}{suffix}"
        f.write_bytes(data)
        self.crashes.append(f"{f}: {what}")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few random byte-level edits: flips, deletions, insertions, duplications, truncation, token splices."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5, 8])):
        if not b:
            b += rng.choice(TOKENS)
            continue
        i = rng.randrange(len(b))
        op = rng.randrange(7)
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            del b[i:i + rng.randint(1, 64)]
        elif op == 2:
            b[i:i] = rng.choice(TOKENS)
        elif op == 3:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 200)]
        elif op == 4:
            del b[rng.randrange(len(b)):]
        elif op == 5:  # a digit becomes another character class
            b[i] = rng.choice(b"0123456789.-eE ,;\n")
        else:  # a line repeated (extra frames, extra header rows)
            s = b.rfind(b"\n", 0, i) + 1
            e = b.find(b"\n", i)
            b[s:s] = b[s:e + 1 if e >= 0 else len(b)]
    return bytes(b)


def seeds(cases: Path, tmp: Path) -> dict[str, list[tuple[bytes, str]]]:
    """Real files per reader: the handed cases and generated clips in every format."""
    out: dict[str, list[tuple[bytes, str]]] = {"bvh": [], "kinect-csv": [], "npz": [], "pyskl": []}
    kind = {".bvh": "bvh", ".csv": "kinect-csv", ".npz": "npz", ".pkl": "pyskl"}
    if cases.is_dir():
        for f in sorted(cases.iterdir()):
            if f.suffix in kind and f.stat().st_size < 100_000:
                out[kind[f.suffix]].append((f.read_bytes(), f.suffix))
    P = generate("happy", seconds=1.0, seed=1)
    for layout in ("bandai22", "kinect25", "mixamo", "coco17"):
        m = express(P, registry().get(layout), 30.0, "happy")
        for ext in (".bvh", ".npz") + ((".csv",) if layout == "kinect25" else ()):
            f = tmp / f"seed{ext}"
            write_motion(m, f)
            out[kind[ext]].append((f.read_bytes(), ext))
        if layout in ("kinect25", "coco17"):
            ann = {"keypoint": m.positions[None], "label": 0, "frame_dir": "x"}
            out["pyskl"].append((pickle.dumps({"annotations": [ann], "label_names": ["happy"]}), ".pkl"))
    return out


def hypothesis_inputs(tally: Tally, n: int, tmp: Path) -> None:
    """Structured inputs per reader built by hypothesis (valid-looking files with odd values and shapes)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    cfg = settings(max_examples=n, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))
    num = st.one_of(st.floats(-1e4, 1e4).map(lambda v: f"{v:g}"),
                    st.sampled_from(["", "0", "0,25", "Tracked", "Inferred", "x", "1e999", "nan", "-inf"]))

    @cfg
    @given(st.sampled_from([",", ";", "\t", " "]), st.integers(0, 2), st.integers(1, 12), st.integers(70, 102),
           st.data())
    def kinect(sep, headers, rows, width, data):
        head = [sep.join(data.draw(st.lists(st.sampled_from(["SpineBase", "headX", "Head_y", "time", "X", "Y",
                                                              "Z", "", "HeadState"]), min_size=1, max_size=width)))
                for _ in range(headers)]
        body = [sep.join(data.draw(st.lists(num, min_size=width - 3, max_size=width))) for _ in range(rows)]
        tally.run("kinect-csv", "\n".join(head + body).encode(), ".csv", tmp)

    @cfg
    @given(st.lists(st.tuples(st.text("ab L_:|", min_size=1, max_size=8), st.integers(0, 6)), min_size=1,
                    max_size=6), st.integers(0, 5), st.integers(-1, 4), st.data())
    def bvh(joints, rows, extra, data):
        lines = ["HIERARCHY"]
        for i, (name, nch) in enumerate(joints):
            lines += [("ROOT " if i == 0 else "JOINT ") + name, "{", "OFFSET 0 1 0",
                      f"CHANNELS {nch} " + " ".join(["Xposition", "Yposition", "Zposition", "Zrotation",
                                                      "Xrotation", "Yrotation"][:nch])]
        lines += ["End Site", "{", "OFFSET 0 1 0", "}"] + ["}"] * len(joints)
        cols = sum(n for _, n in joints)
        lines += ["MOTION", f"Frames: {rows}", "Frame Time: 0.0333"]
        lines += [" ".join(data.draw(st.lists(num, min_size=cols, max_size=cols + 1))) for _ in range(rows + extra)]
        tally.run("bvh", "\n".join(lines).encode(), ".bvh", tmp)

    @cfg
    @given(st.integers(0, 4), st.integers(0, 30), st.sampled_from(["U", "S", "i"]), st.sampled_from([0, 1, 3]),
           st.one_of(st.floats(allow_nan=True), st.just(30.0)), st.booleans())
    def npz(T, J, kind, zeros, fps, parents):
        names = [registry().get("kinect25").joints[j % 25] for j in range(J)]
        arr = {"U": np.array(names, dtype=str), "S": np.array([n.encode() for n in names], dtype="S"),
               "i": np.arange(J)}[kind]
        pos = np.random.default_rng(T * 31 + J).normal(size=(T, J, 3))
        pos[:zeros] = 0
        f = io.BytesIO()
        extra = {"parents": np.arange(J) - 1} if parents else {}
        np.savez(f, positions=pos, joints=arr, fps=np.float64(fps), **extra)
        tally.run("npz", f.getvalue(), ".npz", tmp)

    @cfg
    @given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.sampled_from([17, 25, 18]),
                              st.sampled_from([2, 3]), st.integers(-2, 4)), min_size=0, max_size=3),
           st.booleans())
    def pyskl(anns, with_names):
        out = []
        for M, T, V, C, label in anns:
            kp = np.random.default_rng(M + T + V).normal(size=(M, T, V, C))
            out.append({"keypoint": kp, "label": label, "frame_dir": f"c{len(out)}"})
        data = {"annotations": out}
        if with_names:
            data["label_names"] = ["a", "b", "c"]
        tally.run("pyskl", pickle.dumps(data), ".pkl", tmp)

    for fn in (kinect, bvh, npz, pyskl):
        fn()


def main_() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=10000, help="total inputs, about 60 %% mutations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    ap.add_argument("--cases", default=str(Path(__file__).resolve().parents[2] / "shared" / "cases" / "readers"))
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    tally = Tally(args.timeout)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pool = seeds(Path(args.cases), tmp)
        n_mut = int(args.inputs * 0.6)
        readers = [r for r in pool if pool[r]]
        for i in range(n_mut):
            reader = readers[i % len(readers)]
            data, suffix = rng.choice(pool[reader])
            tally.run(reader, mutate(data, rng), suffix, tmp)
        hypothesis_inputs(tally, (args.inputs - n_mut + 3) // 4, tmp)
    total = Counter()
    print(f"{'reader':<12}{'inputs':>8}{'exit 0':>8}{'exit 2':>8}{'crashes':>9}{'hangs':>7}{'multi-line':>11}")
    for reader, c in sorted(tally.by.items()):
        total.update(c)
        print(f"{reader:<12}{c['inputs']:>8}{c['ok']:>8}{c['error']:>8}{c['crash']:>9}{c['hang']:>7}"
              f"{c['multi-line error']:>11}")
    print(f"{'all':<12}{total['inputs']:>8}{total['ok']:>8}{total['error']:>8}{total['crash']:>9}{total['hang']:>7}"
          f"{total['multi-line error']:>11}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS) {peak:.0f} MB; {time.perf_counter() - t0:.0f} s; seed {args.seed}")
    for c in tally.crashes[:20]:
        print("  " + c)
    sys.exit(1 if total["crash"] or total["hang"] else 0)


if __name__ == "__main__":
    main_()
