"""`python -m eai.cli`: the command line."""
import sys

from eai.cli import main

sys.exit(main())
