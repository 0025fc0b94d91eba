"""`python -m debiaspl` is the `debiaspl` command."""

import sys

from debiaspl.cli import main

sys.exit(main())
