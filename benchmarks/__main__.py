"""``python -m benchmarks <backend> ...``: the same as ``python -m fairlock bench <backend> ...``."""

from __future__ import annotations

import sys

from fairlock.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
