"""The sweep: its params, its identity and its plan (one pod per factor)."""
