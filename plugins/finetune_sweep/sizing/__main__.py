"""``python -m finetune_sweep.sizing recommend ...``: the older spelling of ``python -m finetune_sweep recommend``."""

import sys

from finetune_sweep.sizing.profiles import main

sys.exit(main())
