"""The predictors' networks (PyTorch): the backbones a fine-tuned predictor trains (:mod:`.backbones`) and the
content-aware predictor's frozen recognition features, head and trainable pooling (:mod:`.content`). Used by the
PyTorch engines, training and the graph writer; never by the ONNX engines."""
