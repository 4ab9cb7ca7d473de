"""`python -m cli ...` is the `hicra` command."""

import sys

from cli.main import main

sys.exit(main())
