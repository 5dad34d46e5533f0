"""The paper's study end to end (``imutility reproduce``): configs, cached stages, filtering, baselines, report."""

from imutility.reproduce.config import ConfigError, ReproduceConfig, list_configs, load_config, parse_config
from imutility.reproduce.pipeline import STAGES, NetworkUnavailableError, Study, run_study

__all__ = ["STAGES", "ConfigError", "NetworkUnavailableError", "ReproduceConfig", "Study", "list_configs",
           "load_config", "parse_config", "run_study"]
