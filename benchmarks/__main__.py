"""``python -m benchmarks``: see :mod:`benchmarks`."""
from .cli import main

raise SystemExit(main())
