"""`python -m pipelines.cli ...` is `sagegate ...`."""

import sys

from pipelines.cli import main

sys.exit(main())
