"""``python -m handrail``: the same as the ``handrail`` command."""

import sys

from handrail.cli import main

sys.exit(main())
