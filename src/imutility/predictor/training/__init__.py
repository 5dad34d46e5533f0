"""Training predictors: typed settings (:mod:`.config`), the split by photo and the metrics (:mod:`.split`), the
two architectures' trainers (:mod:`.finetune`, :mod:`.content`) dispatched once by :func:`.train.train_predictor`,
which also writes every predictor's ONNX graphs. Cards are written by :func:`imutility.predictor.card.write_card`."""
