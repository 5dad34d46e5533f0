"""Per-image just-recognizable quality and the plan-check-correct rate control (issue 23): the target derivation on
hand-made ladders, the ordinal model, the planned search's cost bound, the evaluation's equal-top-1 comparison and
BD-rate on known curves, the shipped model for mobilenet_v3_small and the CLI's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import natural_image, photo_folder
from imutility.cli import EXIT_ERROR, EXIT_USAGE, main
from imutility.evaluation.curves import bd_rate
from imutility.evaluation.rate_modes import evaluate_point, fixed_rate_at
from imutility.labelling.jrq import check_retention, lowest_from_which
from imutility.rate import PLANNED, compress_many
from imutility.rate.plan import QualityModel, QualityPlanner, _Planned, list_rate_models, load_rate_model, plan_index
from imutility.rate.training import fit_ordinal, jrq_classes
from imutility.tasks import get_task


# ---------------------------------------------------------------- the target
def test_jrq_on_hand_made_ladders():
    # monotone: kept from index 2 on
    assert lowest_from_which(np.array([False, False, True, True])) == 2
    # non-monotone: kept at index 1 but lost at 2: the JRQ is where it is kept at every higher quality
    assert lowest_from_which(np.array([False, True, False, True, True])) == 3
    assert lowest_from_which(np.array([True, True, False])) is None  # lost at the top: never
    assert lowest_from_which(np.array([True, True])) == 0
    retention = np.array([[0.0, 0.6, 0.95, 1.0],  # monotone confidence curve
                          [0.0, 0.95, 0.3, 0.92],  # non-monotone: dips at index 2
                          [0.9, 0.95, 0.97, 0.4]])  # lost at the top: beyond the ladder (class 4)
    assert jrq_classes(retention, [0.5, 0.9]).tolist() == [[1, 2], [3, 3], [4, 4]]


def test_classification_retention_from_records():
    task = get_task("classification")
    pristine = {"top": [3, 1], "p": [0.8, 0.1]}
    assert task.retention(pristine, {"top": [3, 1], "p": [0.4, 0.3], "pr": 0.4}) == pytest.approx(0.5)
    assert task.retention(pristine, {"top": [1, 3], "p": [0.5, 0.4], "pr": 0.4}) == 0.0  # decision changed
    assert task.retention(pristine, {"top": [3], "p": [0.95], "pr": 0.95}) == 1.0  # capped


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, float("nan"), True])
def test_a_retention_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="retention"):
        check_retention(bad)


# ---------------------------------------------------------------- the model
def _toy_model(rng, n=400):
    """An ordinal model fitted where the JRQ class rises with feature 0 (real fit, small data)."""
    x = rng.normal(size=(n, 3))
    cls = np.clip(np.round(2 + 1.5 * x[:, :1] + rng.normal(0, 0.3, (n, 1))), 0, 5).astype(int)
    arrays = fit_ordinal(x, np.repeat(cls, 2, 1), n_levels=5, hidden=4, epochs=300)
    return QualityModel(network=None, task="classification", codec="jpeg", ladder=[20, 40, 60, 80, 95],
                        retentions=[0.5, 0.9], features=["a", "b", "c"], confidence=0.5,
                        **arrays), x, cls


def test_the_ordinal_model_learns_the_order_and_round_trips(tmp_path):
    model, x, cls = _toy_model(np.random.default_rng(0))
    cum = model.cumulative(x, 0.5)
    assert (np.diff(cum, axis=1) >= -1e-12).all()  # P(JRQ <= q) rises with q
    planned = plan_index(cum, 0.5)
    assert np.corrcoef(planned, np.minimum(cls[:, 0], 4))[0, 1] > 0.8
    assert (plan_index(cum, 0.9) >= planned).all()  # more confidence, never a lower quality
    assert model.retention_index(0.3) == 0 and model.retention_index(0.6) == 1
    with pytest.raises(ValueError, match="retention"):
        model.retention_index(0.95)
    path = model.save(tmp_path / "m.json")
    again = QualityModel.read(path)
    assert np.allclose(again.cumulative(x, 0.9), model.cumulative(x, 0.9))
    raw = json.loads(path.read_text())
    raw["theta"] = raw["theta"][:1]
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="do not match"):
        QualityModel.read(path)


def test_the_planned_search_takes_at_most_two_encodes():
    images = [(i, natural_image(64, 48, seed=i)) for i in range(3)]
    calls = []

    def scorer_for(img):
        def check(batch):
            calls.append(len(batch))
            return np.array([0.0] * len(batch))  # every check fails: the correction is taken, unchecked further
        return _Planned(check, (30, 70))

    out = dict(compress_many(images, 0.5, scorer_for, search=PLANNED))
    assert all(r.quality == 70 and r.encodes == 2 and not r.satisfied for r in out.values())
    assert sum(calls) == 3  # one check per image: the correction runs no network
    assert all(np.isnan(r.utility) for r in out.values())

    def passing(img):
        return _Planned(lambda batch: np.ones(len(batch)), (30, 70))

    out = dict(compress_many(images, 0.5, passing, search=PLANNED))
    assert all(r.quality == 30 and r.encodes == 1 and r.satisfied for r in out.values())


# ---------------------------------------------------------------- the evaluation
def test_equal_top1_comparison_and_bd_rate_on_known_curves():
    fixed_bpp, fixed_acc = np.array([0.5, 1.0, 2.0, 4.0]), np.array([0.5, 0.6, 0.7, 0.72])
    assert fixed_rate_at(fixed_bpp, fixed_acc, 0.6) == (1.0, True)
    rate, reached = fixed_rate_at(fixed_bpp, fixed_acc, 0.65)
    assert reached and rate == pytest.approx(np.sqrt(2.0))  # half-way in log-rate
    assert fixed_rate_at(fixed_bpp, fixed_acc, 0.9) == (4.0, False)
    assert fixed_rate_at(fixed_bpp, np.array([0.5, 0.6, 0.73, 0.72]), 0.9) == (2.0, False)  # the best, not the top
    # a curve at exactly half the rate everywhere: BD-rate -50 %; the useful-range cut restricts the integral
    ref = [(r, a) for r, a in zip([0.5, 1, 2, 4, 8], [0.4, 0.5, 0.6, 0.7, 0.75], strict=True)]
    half = [(r / 2, a) for r, a in ref]
    assert bd_rate(ref, half) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(ref, half, low=0.6) == pytest.approx(-50.0, abs=1e-6)
    assert np.isnan(bd_rate(ref, half, low=0.8))  # nothing shared above the cut


def test_a_mode_that_is_fixed_quality_saves_nothing_and_a_cheaper_one_saves():
    rng = np.random.default_rng(0)
    n, k = 200, 4
    bpp = np.sort(rng.uniform(0.2, 3, (n, k)), 1)
    correct = (rng.uniform(size=(n, k)) < np.array([0.3, 0.6, 0.75, 0.8])).astype(float)
    same = evaluate_point(correct, bpp, np.full(n, 2), draws=50)
    assert same["saving"] == pytest.approx(0.0, abs=1e-9)
    # the same top-1 for less: photos correct at level 1 stay there, the others go to level 2
    smart = np.where(correct[:, 1] == correct[:, 2], 1, 2)
    better = evaluate_point(correct, bpp, smart, draws=50)
    assert better["top1"] == pytest.approx(same["top1"]) and better["saving"] > 0.1
    assert better["saving_ci"][0] <= better["saving"] <= better["saving_ci"][1]


# ---------------------------------------------------------------- shipped model and CLI
def test_the_shipped_rate_model_records_its_network_photos_and_ladder():
    assert "mobilenet_v3_small" in list_rate_models()
    model = load_rate_model("mobilenet_v3_small")
    card = model.card
    assert card["network"] == model.network == "mobilenet_v3_small"
    assert card["ladder"] == model.ladder and model.ladder[0] <= 10 and model.ladder[-1] >= 95
    assert card["photos"]["train"] > 500 and card["photos"]["validation"] > 100
    assert not any("ilsvrc-val600" in f for f in card["training_folders"])  # test photos never trained on
    assert "validation_procedure" in card


def test_compress_for_a_known_network(tmp_path, capsys):
    src = photo_folder(tmp_path / "src", 3, 120, 96)
    out = tmp_path / "out"
    assert main(["compress", str(src), str(out), "--for", "mobilenet_v3_small", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "KiB in" in text
    rows = (out / "manifest.csv").read_text().splitlines()
    assert len(rows) == 4 and all(int(r.split(",")[rows[0].split(",").index("encodes")]) <= 2 for r in rows[1:])
    for p in out.glob("*.jpg"):
        with Image.open(p) as im:
            assert im.format == "JPEG"


def test_compress_refusals(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    natural_image().save(src / "a.png")
    assert main(["compress", str(src), str(tmp_path / "o1"), "--for", "squeezenet1_1"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-rate" in err[0] and "squeezenet1_1" in err[0]
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())
    assert main(["compress", str(src), str(tmp_path / "o2"), "--for", "mobilenet_v3_small", "--keep", "1.5"]) \
        == EXIT_USAGE
    assert main(["compress", str(src), str(tmp_path / "o3"), "--for", "mobilenet_v3_small", "--keep", "0"]) \
        == EXIT_USAGE
    capsys.readouterr()
    assert main(["compress", str(src), str(tmp_path / "o4"), "--for", "mobilenet_v3_small", "--quality", "50"]) \
        == EXIT_USAGE  # two modes
    assert "--for" in capsys.readouterr().err


def test_compress_without_a_network_is_one_fixed_quality(tmp_path, capsys):
    from imutility.rate.plan import DEFAULT_FIXED_QUALITY

    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        natural_image(seed=i).save(src / f"a{i}.png")
    assert main(["compress", str(src), str(tmp_path / "o"), "--no-progress"]) == 0
    assert f"one quality for every image, {DEFAULT_FIXED_QUALITY}" in capsys.readouterr().err
    rows = (tmp_path / "o" / "manifest.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert all(r.split(",")[head.index("quality")] == str(DEFAULT_FIXED_QUALITY) for r in rows[1:])
    assert all(r.split(",")[head.index("encodes")] == "1" for r in rows[1:])


def test_the_planner_refuses_another_networks_model():
    model = load_rate_model("mobilenet_v3_small")

    class Other:
        name = "squeezenet1_1"

    with pytest.raises(ValueError, match="plans for mobilenet_v3_small"):
        QualityPlanner(model, Other(), 0.5)


def test_label_stores_the_jrq_and_relabel_recomputes_it_without_inference(tmp_path, capsys, monkeypatch):
    import pandas as pd

    from conftest import require_shared

    src = require_shared("data", "imagenet-sample")
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(src.iterdir())[:4]:
        (photos / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "labels"
    assert main(["label", str(out), "--task", "classification", "--data", str(photos), "--labelers",
                 "squeezenet1_1", "-d", "jpeg:q=10", "-d", "jpeg:q=50", "-d", "jpeg:q=90", "--no-progress"]) == 0
    jrq = pd.read_parquet(out / "jrq.parquet")
    assert len(jrq) == 4 and set(jrq["retention"]) == {0.9} and jrq["jrq"].dropna().isin([10.0, 50.0, 90.0]).all()
    # relabel at another retention: no network is built (the zoo is made unusable), the table follows
    from imutility import zoo

    monkeypatch.setattr(zoo, "get_labeler", lambda *a, **k: (_ for _ in ()).throw(AssertionError("inference")))
    assert main(["relabel", str(out), "--retention", "0.01"]) == 0
    again = pd.read_parquet(out / "jrq.parquet")
    assert set(again["retention"]) == {0.01}
    assert (again["jrq"].fillna(1000) <= jrq["jrq"].fillna(1000)).all()  # a lower bar: never a higher quality
    capsys.readouterr()
    assert main(["train-rate", str(out), "--for", "squeezenet1_1", "-o", str(tmp_path / "m.json")]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too few" in err[0] and not (tmp_path / "m.json").exists()


def test_compress_for_a_detector(tmp_path, capsys):
    from conftest import require_shared

    coco = require_shared("data", "coco2017-val128", "images")
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(coco.iterdir())[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    model = load_rate_model("fastestdet")
    assert model.task == "detection" and model.card["network"] == "fastestdet"
    assert main(["compress", str(src), str(tmp_path / "out"), "--for", "fastestdet", "--no-progress"]) == 0
    rows = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert len(rows) == 3 and all(1 <= int(r.split(",")[head.index("encodes")]) <= 2 for r in rows[1:])


def test_a_rate_model_plans_one_codec(tmp_path):
    model = load_rate_model("mobilenet_v3_small")
    assert model.codec == "jpeg"
    path = model.save(tmp_path / "m.json")
    with pytest.raises(ValueError, match="plans jpeg qualities, not webp"):
        load_rate_model(path, "webp")
    with pytest.raises(ValueError, match="no webp rate model for 'squeezenet1_1'"):
        load_rate_model("squeezenet1_1", "webp")


def test_metric_gained_at_equal_bits_on_a_known_case():
    # two photos, three qualities; the mode picks level 0 for the photo right everywhere, level 2 for the other
    bpp = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    correct = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    pt = evaluate_point(correct, bpp, np.array([0, 2]), draws=0)
    assert pt["bpp"] == pytest.approx(2.5) and pt["top1"] == pytest.approx(1.0)
    # fixed quality at 2.5 bits (log-interpolated between 2 and 4): top-1 0.5 + 0.5 * log(1.25) / log(2)
    assert pt["gain_at_equal_bits"] == pytest.approx(1.0 - (0.5 + 0.5 * np.log(1.25) / np.log(2)))
    assert pt["saving"] == pytest.approx(1 - 2.5 / 4.0)
