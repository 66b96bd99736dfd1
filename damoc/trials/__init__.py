"""Trials: fine-tune a (compressed) candidate and evaluate it. Plain functions; Ray wraps them."""
