"""Judging predictors and rate control honestly: the metrics with intervals over photos (:mod:`.metrics`), the
benchmark against the cheap rules and the networks' own confidence (:mod:`.benchmark`, its report
:mod:`.report`), rate-accuracy curves and BD-rates (:mod:`.curves`). Reads labelling folders and runs
predictors; nothing below imports it."""
