"""``python -m finetune_sweep render|recommend|findings`` (see :mod:`finetune_sweep.cli`)."""

import sys

from finetune_sweep.cli import main

sys.exit(main())
