"""Trials: fine-tune a (compressed) candidate and evaluate it. Plain functions; Ray wraps them."""

# The scores a trial measures -> higher is better (read by the trial's halving and by the rankings).
METRICS = {"accuracy": True, "gold_logprob": True, "gold_pmi": True, "rouge_l": True, "bertscore": True, "eval_loss": False}
# What each rung evaluation measures (accuracy, gold_logprob and gold_pmi on classification tasks); ROUGE-L and
# BERTScore need generation, which only the final test evaluation runs.
RUNG_METRICS = ("eval_loss", "gold_logprob", "gold_pmi", "accuracy")
# Rows per evaluation batch unless `ranking.eval_batch_size` says otherwise.
EVAL_BATCH_SIZE = 32
