"""Example plug-ins for finetune-sweep: :func:`factors.range_features` and :class:`models.LogisticLongFlat`."""
