"""The predictors shipped in the package: hashes, cards whose commands rebuild them, whole-image behaviour."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared
from imutility.cli import cli
from imutility.distort import JPEG
from imutility.predictor import Predictor
from imutility.predictor.builtin import BUILTIN, builtin_dir
from imutility.tasks import TASK_NAMES

SHIPPED = sorted(set(BUILTIN.values()))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_and_weights(name):
    p = Predictor.load(name)  # the SHA-256 of model.pt is checked against the card here
    card = p.card.raw
    assert card["task"] in TASK_NAMES and card["limitations"] and card["rebuild"]["train"]
    folder = builtin_dir(name)
    assert (folder / "model.pt").stat().st_size < 5 * 2**20
    if (folder / "test_sources.json").exists():
        test = json.loads((folder / "test_sources.json").read_text())
        assert len(test) == card["data"]["test_sources"] and all(t.startswith("../shared/data/") for t in test)
    assert "/work/" not in json.dumps(card) and "/home/" not in json.dumps(card)


REPO = Path(__file__).resolve().parents[1]


def _parse_train(command: str, labels_dir: Path) -> dict:
    args = shlex.split(command)
    assert args[:2] == ["imutility", "train"]
    args[2] = str(labels_dir)  # LABELS must exist for click; the rest is parsed as printed
    ctx = cli.commands["train"].make_context("train", args[2:])
    return ctx.params


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "finetune-classification"])
def test_card_train_command_is_the_recipe_in_the_card(name, tmp_path, monkeypatch):
    """The printed rebuild command, parsed by the CLI itself, gives the settings the card says it was made with."""
    monkeypatch.chdir(REPO)  # the command's paths are relative to the repository root
    card = Predictor.load(name).card.raw
    params, cfg = _parse_train(card["rebuild"]["train"], tmp_path), card["config"]
    for k in ("architecture", "backbone", "features", "soft_target", "hidden", "dropout", "weight_decay", "epochs",
              "batch_size", "max_tiles", "seed", "mode"):
        assert params[k] == cfg[k], k
    # cards made before 0.6.0 calibrated on their training rows: their command says --val-fraction 0
    assert params["val_fraction"] == cfg.get("val_fraction", 0.0)
    assert params["within_level_weight"] == cfg.get("within_level_weight", 0.0)  # none before the option existed
    from imutility.distort import resolve_levels

    assert resolve_levels(params["train_distortions"]) == cfg["train_distortions"]
    if cfg["test_sources_file"] is None:  # a seeded split by photo: the card's seed, no file
        assert params["test_sources"] is None and params["seed"] == cfg["seed"]
    else:
        assert params["test_sources"] == f"src/imutility/resources/predictors/{name}/test_sources.json"
        assert cfg["test_sources_file"].endswith("test_sources.json")


def test_default_sees_damage_outside_the_centre():
    """A q=2 photo with its pristine centre pasted back: the 0.1 predictor (one central crop) called it useful;
    the default reads tiles over the whole image."""
    from imutility.images import load_image

    photos = sorted(require_shared("data", "kodak24").iterdir())[:6]
    default, old = Predictor.load("default"), Predictor.load("finetune-classification")
    pristine, pasted = [], []
    for f in photos:
        img = load_image(f)
        w, h = img.size
        box = ((w - 224) // 2, (h - 224) // 2, (w + 224) // 2, (h + 224) // 2)
        bad = JPEG(2)(img).image.copy()
        bad.paste(img.crop(box), box[:2])
        pristine.append(img)
        pasted.append(bad)
    assert (old(pasted) >= 0.5).all()  # the failure this design fixes
    assert np.median(default(pristine)) >= 0.9 and np.median(default(pasted)) < 0.5


def test_default_calls_pristine_photos_useful_and_confidence_does_not():
    """The documented difference between the two classification predictors, on pristine everyday photos."""
    from imutility.images import load_image

    imgs = [load_image(f) for f in sorted(require_shared("data", "photos").iterdir())]
    assert (Predictor.load("default")(imgs) >= 0.5).mean() >= 0.8
    assert (Predictor.load("confidence-classification")(imgs) >= 0.5).mean() <= 0.5


@pytest.mark.slow
def test_default_card_rebuilds_from_its_commands(tmp_path, monkeypatch):
    """Runs the card's label and train commands (about 30 min on 2 cores) and compares the test metrics."""
    from imutility.cli import main

    require_shared("data", "imagenet-sample")
    monkeypatch.chdir(REPO)  # the card's paths are relative to the repository root, with ../shared beside it
    card = Predictor.load("default").card.raw
    label = shlex.split(card["rebuild"]["label"].replace("runs/cls-jpeg15", str(tmp_path / "labels")))
    assert main(label[1:] + ["--no-progress"]) == 0
    train = shlex.split(card["rebuild"]["train"].replace("runs/cls-jpeg15", str(tmp_path / "labels"))
                        .replace(" OUT ", f" {tmp_path / 'out'} "))
    assert main(train[1:] + ["--no-progress"]) == 0
    new = json.loads((tmp_path / "out" / "card.json").read_text())
    assert new["metrics"]["auroc"] == pytest.approx(card["metrics"]["auroc"], abs=0.01)
    assert new["metrics"]["accuracy"] == pytest.approx(card["metrics"]["accuracy"], abs=0.02)


@pytest.mark.slow
def test_default_card_lead_figure_regenerates_on_a_slice(tmp_path, monkeypatch):
    """The default card's lead figure (within-level AUROC for an off-family network's correctness on ILSVRC val
    photos), regenerated from the card's own rebuild commands on its first 300 photos at its transition levels
    (about 5 min on 2 cores): it lands inside the card's interval."""
    from imutility.cli import main
    from imutility.evaluation.report import card_figures

    require_shared("data", "ilsvrc-val600")
    monkeypatch.chdir(REPO)  # the card's paths are relative to the repository root, with ../shared beside it
    card = Predictor.load("default").card.raw
    fig = card["benchmark"]["ilsvrc_val600"]
    judge = fig["judge"].split()[0]
    labels = tmp_path / "cls-val600"
    label = shlex.split(card["rebuild"]["benchmark_data"].replace("runs/cls-val600", str(labels)))
    at = label.index("-p")
    del label[at:at + 2]  # the card's ladder -> only its transition levels, on the first 300 photos
    for level in fig["transition_levels"]:
        label += ["-d", level]
    assert main(label[1:] + ["--limit", "300", "--no-progress"]) == 0
    bench = shlex.split(card["rebuild"]["benchmark"].replace("runs/cls-val600", str(labels)))
    bench[bench.index("-o") + 1] = str(tmp_path / "bench")
    assert main(bench[1:]) == 0
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    aurocs = results["sets"]["cls-val600"]["unseen"][judge]["auroc"]
    for score in ("default", "control: default on the pristine photo"):  # the predictor and its control
        value = float(np.mean([aurocs[score][lv]["value"] for lv in fig["transition_levels"]]))
        lead = fig["within_level_auroc"][score]
        assert lead["low"] <= value <= lead["high"], (score, value, lead)
    again = card_figures(results, "cls-val600", judge, "default")
    assert again["photos"] == 300 and set(again["transition_levels"]) <= set(fig["transition_levels"])
