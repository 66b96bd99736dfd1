"""The model-compression stage of a trial: layer importance, pruning and sparse merging.

This version implements the identity (prune_ratio 0, merge none); any other setting is refused
before the run starts (damoc.pipeline.check_supported), so nothing claims a compression it did not
do. The stage keeps its final interface: (model, settings, calibration rows) -> (model, info).
"""

from __future__ import annotations

from typing import Sequence

from damoc.config.schema import ModelCompressionConfig
from damoc.data.records import Record


def decoder_layers(model) -> int:
    return int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))


def compress_model(model, cfg: ModelCompressionConfig, calibration: Sequence[Record] = ()) -> tuple[object, dict]:
    """Return the (possibly) compressed model and what was done."""
    layers = decoder_layers(model)
    if cfg.prune_ratio > 0 or cfg.merge.method != "none":
        raise NotImplementedError("layer pruning and merging are not implemented in this version")
    return model, {"method": "none", "layers": layers, "layers_kept": layers, "removed": []}
