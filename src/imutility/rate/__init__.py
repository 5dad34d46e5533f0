"""Rate control for machines: how few bytes an image may take before a network stops working on it.

Two ways to choose each image's quality:

- :mod:`imutility.rate.search` (``compress``, ``compress_many``): a SEARCH over the codec's qualities, driven by a
  scorer (a utility predictor reading the encodings alone, or a network's own retained confidence against the
  pristine image), several encodes and scorer calls per image;
- :mod:`imutility.rate.plan` (``QualityPlanner``, ``plan_compress``): a PLAN for one known network, read from the
  pristine image in one pass of that network (its own confidence) and cheap content features, then one check
  pass on the encoding and at most one correction: <= 2 encodes and 2 network passes per image
  (``imutility compress --for NETWORK``). Its models are trained from a labelled quality ladder
  (:mod:`imutility.rate.training`, ``imutility train-rate``) and shipped for some zoo networks
  (:func:`list_rate_models`).

Torch-free (training aside).
"""

from imutility.rate.search import (
    BYTES_PER_OPEN_PIXEL,
    CODECS,
    PLANNED,
    SEARCHES,
    Compressed,
    NetworkOracle,
    PredictorScorer,
    RateControlError,
    as_scorer,
    check_settings,
    compress,
    compress_many,
)

__all__ = ["BYTES_PER_OPEN_PIXEL", "CODECS", "SEARCHES", "Compressed", "NetworkOracle", "PLANNED", "PredictorScorer",
           "RateControlError", "as_scorer", "check_settings", "compress", "compress_many"]
