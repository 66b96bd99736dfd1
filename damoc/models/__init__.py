"""Models stage: load candidates (hub ids, local checkpoints, zoo references) and compress them
(layer importance, pruning, sparse merging)."""
