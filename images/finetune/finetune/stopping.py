"""The pod being stopped, as an exception: apart, so that the plug-in wrappers
(:mod:`finetune.plugins`, :mod:`finetune.factors`) let it through instead of blaming a team's code
that it happened to interrupt. Imports nothing of the package.
"""

from __future__ import annotations


class Terminated(RuntimeError):
    """The pod was asked to stop (SIGTERM: task cleared, pod deleted, node drained).

    Raised from the signal handler so that the run's failure path records the factor as failed
    instead of leaving it ``running``; SIGKILL (an OOM kill) cannot be caught and is the DAG's
    to report. When it interrupts a statement (an INSERT waiting on a lock), the store cancels
    that statement and drops the connection before anything else touches the database.
    """
