"""`imutility reproduce`: configs, the filtering and baseline maths, and the cached end-to-end study."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, natural_image, require_shared
from imutility.cli import main
from imutility.filtering import CocoScorer, filtered_top1, lowest_rate_keep, random_keep
from imutility.reproduce import baselines as bl
from imutility.reproduce.config import ConfigError, config_path, list_configs, load_config, parse_config
from imutility.reproduce.pipeline import (
    STAGES,
    NetworkUnavailableError,
    Study,
    choose_test_sources,
    run_study,
    stage_fingerprints,
)

TINY = """
name = "tiny"
description = "test"
test_fraction = 0.34
ood_network = "squeezenet1_1"
fig1_max_images = 30
random_draws = 2
[distortions]
train = ["jpeg:q=2", "jpeg:q=50"]
held_out = ["jpeg:q=8"]
[classification]
data = "imagenet-sample"
limit = 12
labelers = ["mobilenet_v2", "squeezenet1_1"]
held_out = ["mobilenet_v1_075"]
[detection]
data = ["coco2017-val128/instances.json"]
limit = 6
labelers = ["yolox_nano", "fastestdet"]
held_out = ["nanodet_m"]
[predictor]
size = 64
epochs = 1
max_samples = 40
"""


# ------------------------------------------------------------------------------------------------- configs
def test_builtin_configs_load_and_differ():
    assert set(list_configs()) >= {"paper", "offline", "quick"}
    paper, offline, quick = load_config("paper"), load_config("offline"), load_config("quick")
    assert paper.classification.labelers == ("inception_v3", "vgg19", "densenet121")
    assert paper.detection.held_out == ("maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn",
                                        "fasterrcnn_mobilenet_v3_large_fpn")
    assert paper.predictor.backbone == "resnet18" and paper.predictor.recipe == "paper"
    assert len(offline.train_distortions) == 9 and not set(offline.train_distortions) & set(offline.heldout_distortions)
    assert quick.classification.limit == 100


def test_config_errors_are_clear(tmp_path):
    raw = tomllib.loads(TINY)
    with pytest.raises(KeyError, match="quick"):
        load_config("quik")
    bad = dict(raw, epochs=3)  # a predictor setting at the top level: a typo, refused
    with pytest.raises(ConfigError, match="epochs"):
        parse_config(bad)
    both = dict(raw, classification=dict(raw["classification"], held_out=["mobilenet_v2"]))
    with pytest.raises(ConfigError, match="both label and be held out"):
        parse_config(both)
    wrong = dict(raw, detection=dict(raw["detection"], held_out=["mobilenet_v3_small"]))
    with pytest.raises(ConfigError, match="classification network"):
        parse_config(wrong)
    typo = dict(raw, classification=dict(raw["classification"], labelers=["mobilenetv2"]))
    with pytest.raises(ConfigError, match="mobilenet_v2"):
        parse_config(typo)
    overlap = dict(raw, distortions={"train": ["jpeg:q=2"], "held_out": ["jpeg:q=2"]})
    with pytest.raises(ConfigError, match="both train and held-out"):
        parse_config(overlap)
    bad_values = [(None, "name", "../escape", "plain name"), ("predictor", "epochs", -1, "positive"),
                  ("predictor", "epochs", "3", "positive"), ("predictor", "size", 0, "positive"),
                  ("classification", "limit", -5, "positive"), (None, "seed", 1.5, "non-negative"),
                  ("predictor", "pretrained", "yes", "true or false")]
    for section, key, value, expect in bad_values:
        bad = dict(raw, **({key: value} if section is None else {section: dict(raw.get(section, {}), **{key: value})}))
        with pytest.raises(ConfigError, match=expect):
            parse_config(bad)
    (tmp_path / "broken.toml").write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")


def test_fingerprints_chain_through_stages():
    cfg = parse_config(tomllib.loads(TINY))
    raw = tomllib.loads(TINY)
    raw["predictor"]["epochs"] = 2
    changed = parse_config(raw)
    a, b = stage_fingerprints(cfg), stage_fingerprints(changed)
    assert a["label"] == b["label"]
    assert all(a[s] != b[s] for s in STAGES[1:])  # train and every stage after it


def test_cli_offers_exactly_the_pipeline_stages():
    from imutility.cli import cli

    opts = {p.name: p for p in cli.commands["reproduce"].params}
    assert tuple(opts["from_stage"].type.choices) == tuple(opts["until"].type.choices) == STAGES
    assert main(["reproduce", "--from", "labels"]) == 2  # a usage error, not a run


def test_test_sources_are_seeded_and_order_free():
    paths = [f"p{i}.jpg" for i in range(50)]
    a = choose_test_sources(paths, 0.2, seed=0)
    assert len(a) == 10 and a == choose_test_sources(paths[::-1] + paths[:5], 0.2, seed=0)
    assert a != choose_test_sources(paths, 0.2, seed=1)


# ------------------------------------------------------------------------------------------------- filtering
def test_filtered_top1_and_rate_baselines():
    correct = np.array([1, 0, 1, 0, 1], dtype=float)
    keep = np.array([True, False, True, False, False])
    out = filtered_top1(correct, keep)
    assert out.metric == 1.0 and out.kept == pytest.approx(0.4)
    assert np.isnan(filtered_top1(correct, np.zeros(5, bool)).metric)
    assert lowest_rate_keep(np.array([0.5, 0.1, 0.3, 0.2]), 2).tolist() == [True, False, True, False]
    k = random_keep(10, 3, np.random.default_rng(0))
    assert (~k).sum() == 3


def test_coco_scorer_perfect_empty_and_pristine_replacement():
    gt = [(np.array([[10, 10, 50, 60]]), [1]), (np.array([[0, 0, 30, 30], [40, 40, 90, 80]]), [3, 18])]
    scorer = CocoScorer(gt)
    perfect = [{"b": b.tolist(), "l": list(lab), "s": [0.9] * len(lab)} for b, lab in gt]
    empty = [{"b": [], "l": [], "s": []}] * 2
    assert scorer.score(perfect) == (pytest.approx(1.0), pytest.approx(1.0))
    assert scorer.score(empty) == (0.0, 0.0)
    half = scorer.filtered(empty, perfect, np.array([True, False]))  # image 2 replaced by its (perfect) pristine
    assert 0 < half.metric < 1 and half.kept == 0.5
    assert scorer.filtered(empty, perfect, np.array([False, False])).metric == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------- baselines
def test_ood_scores_match_scipy():
    from scipy.special import logsumexp, softmax

    z = np.random.default_rng(0).normal(0, 3, (6, 1000))
    msp, energy = bl.ood_scores(z)
    np.testing.assert_allclose(msp, softmax(z, axis=1).max(1), rtol=1e-12)
    np.testing.assert_allclose(energy, logsumexp(z, axis=1), rtol=1e-12)


def test_oriented_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    y = np.array([1, 0, 1, 1, 0, np.nan])
    s = np.array([0.9, 0.2, 0.4, 0.7, 0.5, 0.1])
    assert bl.oriented_auroc(y, s, True) == pytest.approx(roc_auc_score(y[:5], s[:5]))
    assert bl.oriented_auroc(y, s, False) == pytest.approx(1 - roc_auc_score(y[:5], s[:5]))
    assert np.isnan(bl.oriented_auroc(np.ones(4), np.arange(4.0), True))


def test_quality_scores_see_compression(tmp_path):
    img = natural_image(200, 150)
    img.save(tmp_path / "p.png")
    img.save(tmp_path / "q2.jpg", quality=2)
    img.save(tmp_path / "q90.jpg", quality=90)
    psnr, ssim = bl.full_reference_scores(np.asarray(img), np.asarray(img))
    assert psnr == 100.0 and ssim == pytest.approx(1.0)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    pairs = [(str(tmp_path / f), str(tmp_path / "p.png")) for f in ("q2.jpg", "q90.jpg", "bad.jpg")]
    scores, errors = bl.image_quality_scores(pairs, workers=1)
    assert scores[0, 0] > scores[1, 0]  # BRISQUE: heavier compression scores worse (higher)
    assert scores[0, 1] < scores[1, 1] and scores[0, 2] < scores[1, 2]  # PSNR, SSIM lower
    assert np.isnan(scores[2]).all() and errors[2] and errors[0] is None


def test_classifier_logits_give_its_probabilities():
    require_shared("data", "photos")
    from imutility import zoo
    from imutility.images import load_image
    from imutility.zoo.base import softmax

    clf = zoo.get_labeler("squeezenet1_1")
    imgs = [load_image(p) for p in sorted((SHARED / "data" / "photos").iterdir())[:3]]
    np.testing.assert_allclose(softmax(clf.logits(imgs).astype(np.float64)), clf(imgs), atol=1e-5)
    with pytest.raises(NotImplementedError, match="probabilities only"):
        zoo.get_labeler("mobilenet_v3_small").logits(imgs)


# ------------------------------------------------------------------------------------------------- the study
def test_paper_config_without_weights_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["reproduce", "--list-configs"]) == 0
    rc = main(["reproduce", "--config", "paper", "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1
    assert not (tmp_path / "out" / "labels").exists()
    study = Study(load_config("paper"), tmp_path / "o2", log=lambda m: None)
    with pytest.raises(NetworkUnavailableError, match="inception_v3") as err:
        run_study(study)
    # the ResNet-18 predictor is not silently trained from random weights: its missing file is named too
    assert "predictor backbone resnet18" in str(err.value) and "resnet18-f37072fd.pth" in str(err.value)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    require_shared("data", "imagenet-sample")
    out = tmp_path_factory.mktemp("study")
    photos = out / "photos"  # 11 real photos and one corrupt file with a valid class name
    photos.mkdir()
    for src in sorted((SHARED / "data" / "imagenet-sample").iterdir())[:11]:
        (photos / src.name).write_bytes(src.read_bytes())
    (photos / "n01440764_corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    cfg_file = out / "tiny.toml"
    cfg_file.write_text(TINY.replace('data = "imagenet-sample"', f'data = "{photos.as_posix()}"'))
    logs: list[str] = []
    study = Study(load_config(cfg_file), out / "run", shared=SHARED, workers=1, progress=False, log=logs.append)
    done = run_study(study)
    return study, done, logs


def test_study_writes_every_table_and_figure(tiny_study):
    import pandas as pd

    study, done, logs = tiny_study
    assert done == dict.fromkeys(STAGES, "ran")
    assert any("n01440764_corrupt" in line for line in logs)  # reported and skipped, not the end of the run
    test = json.loads((study.out / "labels" / "test_sources_classification.json").read_text())
    assert not any("corrupt" in p for p in test)
    assert "n01440764_corrupt" in (study.out / "labels" / "unreadable_classification.csv").read_text()
    res = json.loads((study.out / "results.json").read_text())
    for key in ("labels", "table1", "table2", "table3", "table4", "fig1", "fig2", "heldout_levels"):
        assert key in res
    assert [r["labels"] for r in res["table1"]] == ["mobilenet_v2", "squeezenet1_1", "combined"]
    trained = [r for r in res["table1"] + res["table2"] if "accuracy" in r]
    assert trained
    for task, rows in (("classification", res["table1"]), ("detection", res["table2"])):
        for r in rows:
            if "accuracy" not in r:
                continue
            folder = study.predictor_dir(task, r["labels"])
            card = json.loads((folder / "card.json").read_text())
            (tn, fp), (fn, tp) = card["metrics"]["confusion_matrix"]
            assert r["accuracy"] == pytest.approx((tn + tp) / (tn + fp + fn + tp))  # the table is the card's
            # train/test disjointness inside the study: the predictor's test photos are the study's split,
            # and no photo of the split reached its training rows
            split = set(json.loads(study.split_file(task).read_text()))
            tested = set(json.loads((folder / "test_sources.json").read_text()))
            assert tested <= split
            assert card["data"]["train_sources"] + card["data"]["test_sources"] <= len(
                {p for p in pd.read_parquet(study.labels_dir(task) / "labels.parquet")["source"]})
            # and by photo identity, not only by name: no test photo is a (resized, recompressed) copy of a
            # training photo (a 64-bit difference hash within 6 bits)
            from imutility.evaluation.dedup import near_copies

            all_sources = set(pd.read_parquet(study.labels_dir(task) / "labels.parquet")["source"])
            assert all_sources & tested and all_sources - tested  # both sides are photos of the table
            assert not near_copies(sorted(all_sources & tested), sorted(all_sources - tested))
    assert res["table1"][-1]["paper_accuracy"] == 0.933
    lv = {r["distortion"] for r in res["labels"]["classification"]["per_level"]}
    assert lv == {"jpeg:q=2", "jpeg:q=50"}
    nets = res["fig2"]["classification"]["networks"]["mobilenet_v1_075"]
    ev = pd.read_parquet(study.eval_dir("classification") / "labels.parquet")
    held = ev[ev["distortion"].isin(study.config.heldout_distortions) & ev["mobilenet_v1_075.pred"].notna()]
    top1 = float((held["mobilenet_v1_075.pred"] == held["target"]).mean())
    assert nets["no filter"]["kept"] == 1.0 and nets["no filter"]["metric"] == pytest.approx(top1)
    det = res["fig2"]["detection"]["networks"]["nanodet_m"]
    assert det["all pristine"]["kept"] == 0.0 and det["all pristine"]["metric"] >= det["no filter"]["metric"] - 1e-9
    assert set(res["fig1"]["auroc"]) == {"brisque", "psnr", "ssim", "msp", "energy", "squeeze", "predictor"}
    # the paper's own Fig. 1 protocol: one classifier, every compressed test image, same decision as pristine
    pp = res["fig1"]["paper_protocol"]

    f1 = pd.read_parquet(study.out / "baselines" / "fig1.parquet")
    ev = pd.read_parquet(study.eval_dir("classification") / "labels.parquet")
    ood = study.config.ood_network
    same = (ev[f"{ood}.pred"] == ev[f"{ood}.pristine_pred"]).astype(float)
    assert pp["images"] == int(f1["in_paper"].sum()) == min(len(ev), study.config.fig1_max_images)
    paper_rows = f1[f1["in_paper"]].merge(ev[["key", "distortion"]].assign(same=same), on=["key", "distortion"])
    np.testing.assert_array_equal(paper_rows["label_paper"].to_numpy(), paper_rows["same"].to_numpy())
    assert pp["useful"] + pp["non_useful"] == pp["images"]
    report = (study.out / "report.md").read_text()
    assert "Fig. 1 as the paper does it" in report
    for title in ("Table I", "Table II", "Table III", "Table IV", "Fig. 1", "Fig. 2(a)", "Fig. 2(b)", "87.5 %"):
        assert title in report
    for fig in ("labels_per_level", "fig1_baselines", "fig2_classification", "fig2_detection",
                "predictor_accuracy_by_level"):
        with Image.open(study.out / "figures" / f"{fig}.png") as im:
            assert im.width > 400 and im.height > 200


def test_study_rerun_skips_and_from_redoes(tiny_study):
    study, _, _ = tiny_study
    assert run_study(study) == dict.fromkeys(STAGES, "skipped")
    cli = ["reproduce", "--config", str(study.out.parent / "tiny.toml"), "--out", str(study.out), "--no-progress",
           "--shared", str(SHARED)]
    assert main(cli) == 3  # all cached; exit status 3 = finished, but an unreadable photo was skipped
    before = (study.out / "labels" / "classification" / "labels.parquet").stat().st_mtime_ns
    done = run_study(study, from_stage="report")
    assert done == {**dict.fromkeys(STAGES[:-1], "skipped"), "report": "ran"}
    assert (study.out / "labels" / "classification" / "labels.parquet").stat().st_mtime_ns == before


def test_cli_train_on_a_study_split(tiny_study, tmp_path):
    """`imutility train --test-sources` retrains one predictor on the study's own test photos."""
    study, _, _ = tiny_study
    split = study.out / "labels" / "test_sources_detection.json"
    rc = main(["train", str(study.out / "labels" / "detection"), str(tmp_path / "p"), "--test-sources", str(split),
               "--epochs", "1", "--size", "64", "--max-samples", "20", "--no-progress"])
    assert rc == 0
    card = json.loads((tmp_path / "p" / "card.json").read_text())
    assert card["split"] == f"sources listed in {split}"
    assert 0 < card["data"]["test_sources"] <= len(json.loads(split.read_text()))


def test_study_resumes_an_interrupted_stage(tiny_study):
    """A train stage killed midway keeps its finished predictors; a changed setting redoes the stage."""
    study, _, _ = tiny_study
    (study.out / "stages" / "train.json").unlink()
    cards = sorted((study.out / "predictors").glob("*/card.json"))
    assert len(cards) >= 2
    card, lost = cards[0], cards[-1].parent
    kept = card.stat().st_mtime_ns
    import shutil

    shutil.rmtree(lost)
    done = run_study(study, until="train")
    assert done == {"label": "skipped", "train": "ran"}
    assert card.stat().st_mtime_ns == kept  # finished before the "interruption": not retrained
    assert (lost / "card.json").is_file()
    import dataclasses

    study.config = dataclasses.replace(study.config, predictor=dataclasses.replace(study.config.predictor, epochs=2))
    done = run_study(study)
    assert done["label"] == "skipped" and done["train"] == "ran" and done["report"] == "ran"
    assert json.loads(card.read_text())["recipe"]["epochs"] == 2


@pytest.mark.slow
def test_quick_config_end_to_end(tmp_path):
    """The README's main job: `imutility reproduce --config quick` (a few minutes on 2 cores)."""
    require_shared("data", "imagenet-sample")
    out = tmp_path / "quick"
    assert main(["reproduce", "--config", "quick", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert all("accuracy" in r for r in res["table1"] + res["table2"])
    assert res["fig1"]["useful"] > 0 and res["fig1"]["non_useful"] > 0
    assert Path(out / "report.md").read_text().count("![") >= 6
    # the segmentation extension: its held-out segmenter filtered by both predictors, mIoU in [0, 1]
    assert res["tasks"] == ["classification", "detection", "segmentation"]
    seg = res["fig2"]["segmentation"]["networks"]["deeplabv3_mnv2_dm05_voc"]
    assert 0 < seg["no filter"]["metric"] <= 1 and "classification-trained predictor" in seg
    assert (out / "figures" / "fig2_segmentation.png").is_file()


def test_study_config_reaches_the_content_architecture(tmp_path, monkeypatch):
    """[predictor] architecture = "content" (and its keys) reach imutility train unchanged."""
    import dataclasses

    from imutility.predictor.training import train as tr
    from imutility.predictor.training.config import InsufficientLabelsError
    from imutility.reproduce.pipeline import stage_train

    raw = tomllib.loads(TINY)
    raw["predictor"] = {**raw.get("predictor", {}), "architecture": "content", "backbone": "efficientnet_lite1",
                        "features": "pooled", "soft_target": "retained_mean", "hidden": 64, "dropout": 0.5}
    cfg = parse_config(raw)
    seen = []

    def fake_train(tc, folder, progress=True):
        seen.append(tc)
        raise InsufficientLabelsError("stop here")

    monkeypatch.setattr(tr, "train_predictor", fake_train)
    study = Study(cfg, tmp_path, log=lambda m: None)
    stage_train(study)
    assert seen and all(dataclasses.asdict(tc)["architecture"] == "content" for tc in seen)
    tc = seen[0]
    assert (tc.backbone, tc.features, tc.soft_target, tc.hidden, tc.dropout) == (
        "efficientnet_lite1", "pooled", "retained_mean", 64, 0.5)
    bad = dict(raw, predictor={**raw["predictor"], "backbone": "resnet18"})  # not a zoo classifier to freeze
    with pytest.raises(ConfigError, match="backbone"):
        parse_config(bad)


def test_a_study_without_a_segmentation_section_runs_the_paper_two_and_keeps_its_fingerprints():
    """Segmentation is an optional section: a config of the paper's two tasks parses as before, and its label-stage
    fingerprint is the one it had before the third task existed (a finished study resumes without relabelling)."""
    from imutility.reproduce.pipeline import STAGE_SETTINGS

    cfg = parse_config(tomllib.loads(TINY))
    assert cfg.tasks == ("classification", "detection") and cfg.segmentation is None
    d = cfg.as_dict()
    before = hashlib.sha256(json.dumps({k: d[k] for k in ("classification", "detection", "train_distortions",
                                                          "test_fraction", "seed")}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    assert cfg.fingerprint(*STAGE_SETTINGS["label"]) == before
    with_seg = load_config("offline")
    assert with_seg.tasks[-1] == "segmentation" and with_seg.segmentation.held_out == ("deeplabv3_mnv2_dm05_voc",)
    assert with_seg.fingerprint(*STAGE_SETTINGS["label"]) != parse_config(
        {k: v for k, v in tomllib.loads(config_path("offline").read_text()).items() if k != "segmentation"}
    ).fingerprint(*STAGE_SETTINGS["label"])


def test_detection_test_photos_come_from_test_data_only(tmp_path):
    """offline/paper: COCO detectors trained on train2017, so only val2017 photos may be test photos."""
    from imutility.reproduce.pipeline import _test_eligible

    cfg = load_config("offline")
    assert cfg.detection.test_data == ("coco2017-val128/instances.json",)
    study = Study(cfg, tmp_path, shared=SHARED, log=lambda m: None)
    ok = _test_eligible(study, "detection")
    assert ok(str(SHARED / "data" / "coco2017-val128" / "images" / "000000000139.jpg"))
    assert not ok(str(SHARED / "data" / "coco2017-train128" / "images" / "000000000009.jpg"))
    assert _test_eligible(study, "classification")("/anything.jpg")  # unset: every photo
    raw = tomllib.loads(TINY)
    raw["detection"] = {**raw["detection"], "test_data": ["elsewhere.json"]}
    with pytest.raises(ConfigError, match="not entries of data"):
        parse_config(raw)


def test_feature_squeezing_by_hand():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None].repeat(3, axis=2)
    sq = bl.squeeze_bit_depth(arr)
    assert len(np.unique(sq)) == 16 and sq[0, 0, 0] == 0 and sq[-1, -1, 0] == 255
    flat = np.full((8, 8, 3), 200, dtype=np.uint8)
    np.testing.assert_array_equal(bl.squeeze_median(flat), flat)

    class Stub:
        """Logits that read the image's mean and its number of distinct values: squeezing moves both."""

        def logits(self, images):
            return np.array([[float(np.mean(im)) / 50, len(np.unique(im)) / 50, 0.0] for im in images])

    smooth = np.full((16, 16, 3), 255, dtype=np.uint8)  # already 4-bit and constant: squeezers change nothing
    d = bl.feature_squeezing(Stub(), [smooth, arr])
    assert d[0] == pytest.approx(0.0) and d[1] > 0.05
