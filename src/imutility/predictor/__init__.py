"""The utility predictor (Section IV): from the distorted image alone, is it still useful to machines?

``Predictor.load("default")`` gives the predictor shipped with the package; :func:`train_predictor`
trains new ones from a labels table (``imutility label``).
"""

from imutility.predictor.backbones import create_backbone, list_backbones
from imutility.predictor.model import Predictor, PredictorLoadError
from imutility.predictor.train import TrainConfig, train_predictor

__all__ = ["Predictor", "PredictorLoadError", "TrainConfig", "create_backbone", "list_backbones", "train_predictor"]
