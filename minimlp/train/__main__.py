"""``python -m minimlp.train``."""

import sys

from minimlp.train.command import main

sys.exit(main())
