"""`python -m panicd` is the `panicd` command."""

import sys

from panicd.cli import main

sys.exit(main())
