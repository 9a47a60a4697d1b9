"""`python -m eai.cli`: the command line."""
import sys

from eai.cli.main import main

sys.exit(main())
