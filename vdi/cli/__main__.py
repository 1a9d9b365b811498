"""`python -m vdi.cli`: the same as the `vdi` command."""

import sys

from vdi.cli import main

sys.exit(main())
