"""``python -m finetune_sweep.pods render ...``: the older spelling of ``python -m finetune_sweep render``."""

import sys

from finetune_sweep.pods.render import main

sys.exit(main())
