"""``python -m ascend_async.bench ...`` (same as ``ascend-async ...``)."""

import sys

from ._cli import main

sys.exit(main())
