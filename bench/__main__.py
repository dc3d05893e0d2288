"""``python -m bench``: run the benchmarks (see :mod:`bench`)."""

from __future__ import annotations

import sys

from bench import main


sys.exit(main())
