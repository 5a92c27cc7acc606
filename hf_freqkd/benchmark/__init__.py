"""Benchmarks users can rerun: ``hf-freqkd benchmark quality`` (accuracy of every method on one
teacher / student / data / schedule, over seeds) and ``hf-freqkd benchmark speed`` (step time and
peak memory against the limit of any distillation step)."""
