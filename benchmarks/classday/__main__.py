"""``python -m benchmarks.classday [--quick] [--out DIR] [--seed N]``: one class-day run (`run.main`)."""

from __future__ import annotations

import os
import sys

from benchmarks.classday.run import main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
