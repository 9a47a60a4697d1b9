"""`eai bench` and `eai baseline`: the benchmark protocol run end to end, every model on the same folds."""
