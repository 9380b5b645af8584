"""Airflow-side package of finetune-sweep: settings, sizing, pod pieces, planning, gate, pod backends."""
