"""The `eai` command line (eai.cli.main:main)."""
from eai.cli.main import main

__all__ = ["main"]
