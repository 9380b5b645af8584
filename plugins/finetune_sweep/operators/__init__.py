"""The DAG's operators: the factor pod (with its OOM ladder) and the baseline gate sensor.

Imports run one way: ``factor_pod`` (the operator) -> ``trigger`` (its deferred waiting) ->
``pod_managers``, ``recording``, ``reattach``, ``ladder`` (the pieces both or the operator use);
none of them imports the operator. ``gate_sensor`` stands alone.
"""
