"""The older spelling of ``python -m finetune_sweep ...``, kept working: the same one CLI.

It runs the package's entry point by name (no import of the CLI, which sits above this room).
"""

import runpy
import sys

sys.argv[0:1] = ["python -m finetune_sweep"]
runpy.run_module("finetune_sweep", run_name="__main__", alter_sys=True)
