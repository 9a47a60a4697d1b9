"""The command line as a new user meets it (issue 24): one-line errors before any model loads, --version,
files others can read."""
import json
import os
import subprocess
import sys

import pytest

from eai.cli.main import main
from eai.io.files import atomic_write_text


def test_version_and_parser_errors_are_one_line(capsys):
    for argv in (["frob"], ["explain", "x.bvh"], ["explain", "x.bvh", "--model", "r", "--int8"]):  # int8: removed
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("eai: error:") and "usage:" not in err


def test_bad_path_errors_before_torch_loads(tmp_path):
    code = ("import sys; from eai.cli.main import main; rc = main(['explain', 'nosuch.bvh', '--model', 'x']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert out.stdout.split() == ["2", "False"] and "no such file" in out.stderr


def test_written_files_readable_by_others_under_umask_022(tmp_path):
    """JSON, safetensors weights (whose writer makes a private file) and peft's adapter folder all get the modes
    open() and mkdir() give under the umask."""
    import torch

    from eai.llm.backbone import TINY
    from eai.llm.builder import LLMConfig, build_llm, save_llm
    from eai.llm.tokenizer import SkeletonTokenizerConfig
    from eai.run import save_weights

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_weights(torch.nn.Linear(3, 2), tmp_path / "w.safetensors")
        save_llm(tmp_path, build_llm(LLMConfig(backbone=TINY, tokenizer=SkeletonTokenizerConfig(hidden=64))))
    finally:
        os.umask(old)
    files = [tmp_path / "a.json", tmp_path / "w.safetensors", tmp_path / "skeleton_tokenizer.safetensors",
             *sorted((tmp_path / "llm-adapter").iterdir())]
    assert len(files) >= 5 and all(f.stat().st_mode & 0o777 == 0o644 for f in files), \
        [(f.name, oct(f.stat().st_mode & 0o777)) for f in files]
    assert (tmp_path / "llm-adapter").stat().st_mode & 0o777 == 0o755


def _eai(*argv, **kw):
    """`eai ARGV` as a fresh process of this source tree (a first contact: nothing imported yet)."""
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "eai.cli", *map(str, argv)], capture_output=True, text=True, env=env,
                          **kw)


def test_an_error_after_the_model_loads_is_still_one_line(tiny_run, synth_dir, tmp_path):
    """transformers' progress bar (loading a backbone from a folder) and library warnings do not come before the
    one-line error of a run whose saved LoRA adapter does not fit its model."""
    import json
    import shutil

    from eai.llm.backbone import TINY, load_backbone

    lm, tok = load_backbone(TINY)  # the tiny backbone saved as a folder: loaded with from_pretrained
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    m = json.loads((run / "manifest.json").read_text())
    m["llm"]["backbone"] = str(tmp_path / "lm")
    (run / "manifest.json").write_text(json.dumps(m))
    cfg = json.loads((run / "llm-adapter" / "adapter_config.json").read_text())
    (run / "llm-adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "r": cfg["r"] * 2}))
    clip = sorted(synth_dir.rglob("*.bvh"))[0]
    out = _eai("explain", clip, "--model", run)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("eai: error:"), out.stderr
    assert "do not fit" in out.stderr


def test_convert_bvh_to_kinect_csv_to_npz_keeps_the_canonical_joints(tmp_path, capsys):
    """A Bandai-layout BVH -> Kinect v2 CSV -> NPZ: every canonical joint both skeletons have comes back within
    1e-5 m (the CSV's 6 decimals of a metre, float32); the Kinect joints the clip lacks are left out, and its joints
    Kinect lacks (the collars, the ground projection) are not written, each said on stderr."""
    import numpy as np

    from eai.data.synth import express, generate
    from eai.io import read_motion, write_motion
    from eai.skeleton.registry import registry
    from eai.skeleton.unify import to_canonical

    write_motion(express(generate("sad", 3.0, 30.0, "walk", seed=4), registry().get("bandai22"), 30.0),
                 tmp_path / "a.bvh")
    assert main(["convert", str(tmp_path / "a.bvh"), str(tmp_path / "a.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("eai: warning:") for e in err)
    assert all(j in err[0] for j in ("joint_Root", "Shoulder_L", "Shoulder_R"))
    assert all(j in err[1] for j in ("HandLeft", "HandTipLeft", "ThumbRight"))
    assert main(["convert", str(tmp_path / "a.csv"), str(tmp_path / "b.npz")]) == 0
    src, back = read_motion(tmp_path / "a.bvh"), read_motion(tmp_path / "b.npz")
    assert back.layout == "kinect25" or "SpineBase" in back.joints
    (p0, m0, _), (p1, m1, _) = to_canonical(src), to_canonical(back)
    can = registry().canonical
    assert m0.sum() == 21 and m1.sum() == 19  # Bandai: no hands past the wrists; Kinect: no collars
    assert (m1 == m0 & ~np.isin(list(can.names), ["l_collar", "r_collar"])).all()
    assert np.abs(p0[:, m1] - p1[:, m1]).max() < 1e-5
    assert back.n_frames == src.n_frames and abs(back.fps - 30.0) < 1e-3


def test_the_program_ends_fast_with_all_its_output(synth_dir):
    """eai as the program skips Python's teardown (atexit, unloading modules) after a read-only command, with
    everything it printed delivered and its exit code kept; main(argv) from Python returns as usual."""
    import json
    from pathlib import Path

    clip = sorted(synth_dir.rglob("*.bvh"))[0]
    code = ("import atexit, sys; atexit.register(lambda: print('teardown', file=sys.stderr)); "
            "from eai.cli import main; sys.argv = ['eai'] + sys.argv[1:]; sys.exit(main())")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    run = lambda *a: subprocess.run([sys.executable, "-c", code, *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, env=env)
    out = run("features", clip, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["file"] == str(clip) and "teardown" not in out.stderr
    out = run("convert", clip, "/nonexistent-dir/x.txt")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "teardown" not in out.stderr
    out = run("synth")  # a usage error: the parser's one line, then the normal exit
    assert out.returncode == 2 and "teardown" in out.stderr


def test_openmp_threads_sleep_unless_told_otherwise():
    """eai's command line sets OMP_WAIT_POLICY=PASSIVE before torch loads (spinning threads beside another busy
    process made a cold explain several times slower); a value in the environment wins."""
    from pathlib import Path

    code = "import eai.cli.main, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        e = {**env, "PYTHONPATH": src, **({"OMP_WAIT_POLICY": given} if given else {})}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)
        assert out.stdout.strip() == want, out.stderr


def test_make_demo_on_an_older_run_folder_says_so_in_one_line_and_keeps_it(tmp_path, capsys):
    """A runs/demo written by an older eai (another manifest format) is refused with one line and exit 2, and
    left as it is (the user deletes it to retrain)."""
    from eai.demo import train_demo_run

    old = tmp_path / "demo"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": 3, "config": {}}))
    with pytest.raises(SystemExit) as e:
        train_demo_run(tmp_path / "data", old, 8, "tiny-random")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and "format 3" in err and f"delete {old}" in err
    assert json.loads((old / "manifest.json").read_text())["format"] == 3
