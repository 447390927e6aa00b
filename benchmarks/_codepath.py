"""``--code DIR`` for the benchmarks that compare checkouts: which checkout's ``imprint`` to import (default: this one)."""
import os


def code_path(argv) -> str:
    """The value of ``--code DIR`` / ``--code=DIR`` in ``argv``, else the checkout this file sits in."""
    for i, a in enumerate(argv):
        if a == "--code" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--code="):
            return a.split("=", 1)[1]
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
