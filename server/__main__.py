"""`python -m server` is the `model-gateway` command."""

import sys

from server.cli import main

sys.exit(main())
