"""A study's places and shared reads: where each stage's outputs live, its networks, the evaluation table.

The stages (:mod:`.pipeline`), the analysis (:mod:`.analysis`) and the report (:mod:`.report`) all read a study
through this module, so none of them needs another's code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imutility.labelling.table import COMBINED  # the combined labels' name: their predictor, their column
from imutility.reproduce.config import ReproduceConfig

STAGES = ("label", "train", "evaluate", "baselines", "report")


@dataclass
class Study:
    """Where a study's outputs live, and how to run its networks."""

    config: ReproduceConfig
    out: Path
    shared: Path | None = None
    models: Path | None = None
    device: str = "cpu"
    workers: int = 1
    progress: bool = True
    log: Callable[[str], None] = print
    _networks: dict = field(default_factory=dict, repr=False)

    def labels_dir(self, task: str) -> Path:
        return self.out / "labels" / task

    def split_file(self, task: str) -> Path:
        return self.out / "labels" / f"test_sources_{task}.json"

    def predictor_dir(self, task: str, name: str) -> Path:
        return self.out / "predictors" / f"{task}-{name}"

    def eval_dir(self, task: str) -> Path:
        return self.out / "evaluate" / task

    def scores_file(self, task: str, predictor: str) -> Path:
        return self.eval_dir(task) / "scores" / f"{predictor}.parquet"

    def predictors(self, task: str) -> list[str]:
        """Predictor names of one task: one per labeler, then ``combined``."""
        return [*self.config.task(task).labelers, COMBINED]

    def labeler(self, name: str):
        """A network of the study, built once per run (label, evaluate and baselines share them)."""
        from imutility import zoo

        if name not in self._networks:
            self._networks[name] = zoo.get_labeler(name, models=self.models, device=self.device)
        return self._networks[name]


def predictor_jobs(study: Study, task: str) -> list[tuple[str, Path]]:
    """(score name, predictor folder) to run on a task's evaluation images: its own, then the other task's."""
    from imutility.tasks import get_task

    other = get_task(task).other
    jobs = [(f"{task}-{n}", study.predictor_dir(task, n)) for n in study.predictors(task)]
    return [*jobs, (f"{other}-{COMBINED}", study.predictor_dir(other, COMBINED))]


def eval_table(study: Study, task: str):
    """The evaluation table of a task with ``combined`` (the labelers' unanimous label) and ``score:<predictor>``."""
    import pandas as pd

    from imutility.utility import combine

    table = pd.read_parquet(study.eval_dir(task) / "labels.parquet")
    table = table[table["augment"].isna()].reset_index(drop=True)
    labs = study.config.task(task).labelers
    table[COMBINED] = combine(table[[f"{n}.label" for n in labs]].to_numpy(dtype=float), "unanimous")
    for name, _ in predictor_jobs(study, task):
        f = study.scores_file(task, name)
        if f.is_file():
            s = pd.read_parquet(f).rename(columns={"score": f"score:{name}"})
            table = table.merge(s, on=["key", "distortion"], how="left")
    return table
