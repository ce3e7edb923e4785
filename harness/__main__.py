"""`python -m implicit_ssm_eval.harness ...` is `implicit-eval ...` (where the package is on PYTHONPATH only)."""

import sys

from .cli import main

sys.exit(main())
