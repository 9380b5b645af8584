"""``python -m finetune``: the pod's entry point (see :mod:`finetune.cli`)."""

from __future__ import annotations

from finetune.cli import main

raise SystemExit(main())
