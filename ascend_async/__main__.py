"""``python -m ascend_async bench ...`` / ``python -m ascend_async doctor``."""

import sys

from .bench._cli import main

sys.exit(main())
