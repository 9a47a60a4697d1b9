"""The command line as a new user meets it (issue 24): one-line errors before any model loads, --version,
files others can read."""
import os
import subprocess
import sys

from eai.cli.main import main
from eai.io.files import atomic_write_text


def test_version_and_parser_errors_are_one_line(capsys):
    for argv in (["frob"], ["explain", "x.bvh"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("eai: error:") and "usage:" not in err


def test_bad_path_errors_before_torch_loads(tmp_path):
    code = ("import sys; from eai.cli.main import main; rc = main(['explain', 'nosuch.bvh', '--model', 'x']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert out.stdout.split() == ["2", "False"] and "no such file" in out.stderr


def test_written_files_readable_by_others_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
