"""Pod sizing (DESIGN 6): profiles and the factor -> profile map (:mod:`.profiles`), memory
quantities (:mod:`.quantities`), and the recommender that learns from recorded peaks
(:mod:`.recommend`).

The names below are the package's public face (DESIGN 2 lists them under ``sizing``), so
``from finetune_sweep.sizing import PodProfile, profile_for`` keeps working.
"""

from finetune_sweep.sizing.profiles import (
    PROFILE_ORDER,
    PROFILES,
    SIZING_MAP,
    PodProfile,
    SizingError,
    load_profiles,
    load_sizing,
    next_profile,
    profile_for,
)
from finetune_sweep.sizing.quantities import format_bytes, parse_quantity

__all__ = [
    "PROFILES",
    "PROFILE_ORDER",
    "SIZING_MAP",
    "PodProfile",
    "SizingError",
    "format_bytes",
    "load_profiles",
    "load_sizing",
    "next_profile",
    "parse_quantity",
    "profile_for",
]
