"""Pod sizing: profiles and the factor -> profile map, the OOM ladder, the recommender."""
