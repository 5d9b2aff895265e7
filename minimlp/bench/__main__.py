"""``python -m minimlp.bench``."""

import sys

from minimlp.bench.command import main

main(sys.argv[1:])
