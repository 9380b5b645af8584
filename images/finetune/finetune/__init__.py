"""The pod runtime of finetune-sweep: fine-tunes one factor's model and its same-basis baselines."""
