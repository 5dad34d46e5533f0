"""The content-aware predictor: tiles over the whole image, a frozen classifier, a head; training, loading, ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import natural_image, require_shared
from imutility.cli import main
from imutility.distort import JPEG
from imutility.predictor import Predictor, PredictorLoadError, TrainConfig, train_predictor
from imutility.predictor.artefacts.deploy import export_onnx
from imutility.predictor.geometry import TileSpec
from imutility.predictor.networks.content import TilePool, confidence_features


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (1352, 900), (100, 60), (3000, 200)])
def test_tiles_cover_the_whole_image(size):
    spec = TileSpec(size=224, max_tiles=4)
    (rw, rh), starts = spec.boxes(*size)
    assert min(rw, rh) == 224 and 1 <= len(starts) <= 4
    covered = np.zeros((rh, rw), dtype=bool)
    for x, y in starts:
        assert 0 <= x <= rw - 224 and 0 <= y <= rh - 224
        covered[y:y + 224, x:x + 224] = True
    long_side = max(rw, rh)
    if long_side <= 4 * 224:  # within max_tiles the tiles cover every pixel
        assert covered.all()
    tiles = spec.tiles(natural_image(*size))
    assert len(tiles) == len(starts) and all(t.shape == (224, 224, 3) for t in tiles)


def test_tile_pool_mean_min_and_calibration():
    pool = TilePool()
    logits = torch.tensor([1.0, 3.0, -2.0, 5.0])
    owner = torch.tensor([0, 0, 1, 2])
    np.testing.assert_allclose(pool(logits, owner, 3).detach().numpy(), [2.0, -2.0, 5.0])
    with torch.no_grad():
        pool.weights.copy_(torch.tensor([0.0, 1.0]))
    np.testing.assert_allclose(pool(logits, owner, 3).detach().numpy(), [1.0, -2.0, 5.0])
    pool.calibrate(2.0, 1.0)
    np.testing.assert_allclose(pool(logits, owner, 3).detach().numpy(), [3.0, -3.0, 11.0])


def test_confidence_features_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    f = confidence_features(logits)[0].numpy()
    p = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(f[:3], [0.7, -(p * np.log(p)).sum(), 0.5], rtol=1e-5)


@pytest.fixture(scope="module")
def content_labels(tmp_path_factory) -> Path:
    """Real photos at q=2 (non-useful) and q=90 (useful), with dense targets, in the `imutility label` layout."""
    photos = require_shared("data", "imagenet-sample")
    out = tmp_path_factory.mktemp("labels")
    rows = []
    for i, src in enumerate(sorted(photos.iterdir())[::40][:24]):
        from imutility.images import load_image

        img = load_image(src)
        for q, lab, kept in ((2, 0.0, 0.1), (90, 1.0, 0.95)):
            res = JPEG(q)(img)
            rel = f"images/jpeg_q{q}/{src.name}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(res.data)
            rows.append({"key": src.name, "source": str(src), "augment": None, "distortion": f"jpeg:q={q}",
                         "level": float(q), "path": rel, "bytes": len(res.data), "bpp": res.bpp, "label": lab,
                         "retained_mean": kept + 0.001 * i, "confidence_mean": kept * 0.8})
    pd.DataFrame(rows).to_parquet(out / "labels.parquet")
    (out / "config.json").write_text(json.dumps({"task": "classification", "dataset": "sample",
                                                 "labelers": ["a", "b"], "distortions": ["jpeg:q=2", "jpeg:q=90"],
                                                 "seed": 0}))
    return out


@pytest.fixture(scope="module")
def content_predictor(content_labels, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("content")
    train_predictor(TrainConfig(labels=str(content_labels), architecture="content", backbone="efficientnet_lite0",
                                features="pooled", soft_target="retained_mean", hidden=16, epochs=40,
                                batch_size=16), out, progress=False)
    return out


def test_content_training_card_and_files(content_predictor, content_labels):
    card = json.loads((content_predictor / "card.json").read_text())
    assert card["architecture"] == "content" and card["backbone"] == "efficientnet_lite0"
    assert card["target"]["column"] == "retained_mean" and card["target"]["calibration"]["on"] == "label"
    assert card["input"]["tiles"]["size"] == 224 and card["head"]["n_features"] == 1285
    # only the head travels: the backbone is the zoo's
    assert (content_predictor / "model.pt").stat().st_size < 2 * 2**20
    test = json.loads((content_predictor / "test_sources.json").read_text())
    assert len(test) == card["data"]["test_sources"] and len(test) > 0
    # q=2 and q=90 of real photos: a recognising predictor separates them on unseen photos
    assert card["metrics"]["auroc"] > 0.9, card["metrics"]
    assert list((content_labels / "features").glob("*.npz"))  # features kept for the next head


def test_calibration_is_fitted_on_whole_validation_photos(content_predictor, content_labels):
    from imutility.predictor.training.split import split_validation

    card = json.loads((content_predictor / "card.json").read_text())
    assert card["target"]["calibration"]["photos"].startswith("validation photos")
    assert card["validation"]["photos"] >= 1 and card["data"]["validation_rows"] == card["validation"]["rows"]
    assert card["target"]["calibration"]["rows"] == card["validation"]["rows"]  # both levels of each photo labelled
    val = set(json.loads((content_predictor / "validation_sources.json").read_text()))
    assert len(val) == card["validation"]["photos"]
    assert not val & set(json.loads((content_predictor / "test_sources.json").read_text()))
    assert card["data"]["train_rows"] + card["data"]["validation_rows"] + card["data"]["test_rows"] == 48
    table = pd.read_parquet(content_labels / "labels.parquet")
    # an augmented copy of every photo: the copies of validation photos must fit on neither side
    table = pd.concat([table, table.assign(augment="flip")], ignore_index=True)
    fit, val = split_validation(table, np.arange(len(table)), 0.25, 0)
    fit_src, val_src = set(table["source"][fit]), set(table["source"][val])
    assert val_src and not fit_src & val_src and len(val_src | fit_src) == 24
    assert table["augment"][val].isna().all()  # copies never validate
    assert len(val) == 2 * len(val_src) and len(fit) == len(table) - 4 * len(val_src)  # 2 levels, 2 copies
    fit0, val0 = split_validation(table, np.arange(len(table)), 0, 0)
    assert len(val0) == 0 and len(fit0) == len(table)


def test_the_within_level_term_scores_only_deviations_from_each_level_mean(content_labels, tmp_path):
    import torch

    from imutility.predictor.training.content import _within_level_error

    level = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0.2, 0.4, 0.7, 0.9])
    assert float(_within_level_error(target + torch.tensor([0.5, 0.5, -0.3, -0.3]), target, level)) < 1e-12  # shifts
    out = torch.tensor([0.4, 0.2, 0.8, 0.8])  # level 0 ranked backwards, level 1 flat
    want = ((0.1 - -0.1) ** 2 + (-0.1 - 0.1) ** 2 + (0 - -0.1) ** 2 + (0 - 0.1) ** 2) / 4
    assert float(_within_level_error(out, target, level)) == pytest.approx(want)
    cfg = TrainConfig(labels=str(content_labels), architecture="content", backbone="efficientnet_lite0",
                      features="pooled", soft_target="retained_mean", hidden=16, epochs=3, batch_size=16,
                      within_level_weight=4.0)
    card = train_predictor(cfg, tmp_path / "p", progress=False).raw
    assert card["recipe"]["loss"].endswith("+ 4 x within-level deviation error")
    with pytest.raises(ValueError, match="within_level_weight"):
        TrainConfig(labels="x", within_level_weight=-1).validate()


def test_without_a_validation_split_the_card_says_calibration_used_training_rows(content_labels, tmp_path):
    cfg = TrainConfig(labels=str(content_labels), architecture="content", backbone="efficientnet_lite0",
                      features="pooled", soft_target="retained_mean", hidden=16, epochs=3, batch_size=16,
                      val_fraction=0)
    card = train_predictor(cfg, tmp_path / "p", progress=False).raw
    assert card["target"]["calibration"]["photos"] == "training rows (no validation split)"
    assert card["validation"] is None and card["data"]["validation_rows"] == 0
    assert not (tmp_path / "p" / "validation_sources.json").exists()


def test_content_predictor_scores_onnx_and_errors(content_predictor, tmp_path):
    p = Predictor.load(content_predictor, runtime="torch")
    assert p.architecture == "content"
    imgs = [natural_image(50, 700, seed=1), natural_image(640, 480, seed=2).convert("L"), natural_image(224, 224)]
    s = p(imgs)
    assert s.shape == (3,) and np.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
    assert isinstance(p(imgs[0]), float)  # a single image is accepted: one float
    p.use_onnx_runtime(export_onnx(p, tmp_path / "c.onnx"))
    np.testing.assert_allclose(p(imgs), s, atol=1e-4)
    import onnx

    meta = {m.key: m.value for m in onnx.load(tmp_path / "c.onnx").metadata_props}
    assert json.loads(meta["imutility.card"])["architecture"] == "content"
    card = json.loads((content_predictor / "card.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pt").write_bytes((content_predictor / "model.pt").read_bytes())
    (bad / "card.json").write_text(json.dumps({**card, "backbone_sha256": "0" * 64}))
    with pytest.raises(PredictorLoadError, match="declares"):
        Predictor.load(bad)


def test_cli_trains_a_content_predictor(content_labels, tmp_path, capsys):
    rc = main(["train", str(content_labels), str(tmp_path / "p"), "--architecture", "content", "--backbone",
               "efficientnet_lite0", "--epochs", "5", "--no-progress"])
    assert rc == 0 and "AUROC" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / "card.json").read_text())["features"] == "confidence"
    assert main(["train", str(content_labels), str(tmp_path / "q"), "--architecture", "content",
                 "--epochs", "0", "--no-progress"]) == 2  # a usage error: one line, nothing written
    assert main(["train", str(content_labels), str(tmp_path / "q"), "--device", "cuda:7", "--no-progress"]) == 1
    assert "cuda:7" in capsys.readouterr().err
    assert not (tmp_path / "q" / "model.pt").exists()


def test_batched_jpeg_decode_path_matches_pillow_and_survives_a_corrupt_file(tmp_path):
    """predict_files: JPEGs decoded in batches by torchvision's decoder (nvJPEG on a GPU; here the CPU one), resized
    and tiled as tensors; a corrupt JPEG inside a batch is reported alone, a PNG takes the Pillow path."""
    src = require_shared("data", "imagenet-sample")
    files = sorted(src.iterdir())[:10]
    (tmp_path / "broken.jpg").write_bytes(files[0].read_bytes()[:600])  # a JPEG header, then nothing
    natural_image(300, 200).save(tmp_path / "x.png")
    paths = [*files[:5], tmp_path / "broken.jpg", *files[5:], tmp_path / "x.png"]
    p = Predictor.load("default")
    ref = {str(f): s for f, s, e in p.predict_paths(paths, 8)}
    got = list(p.predict_files(paths, batch_size=8))
    assert [str(f) for f, _, _ in got] == [str(f) for f in paths]  # order kept
    errors = {str(f): e for f, s, e in got if e is not None}
    assert list(errors) == [str(tmp_path / "broken.jpg")]
    diffs = [abs(s - ref[str(f)]) for f, s, e in got if e is None]
    assert len(diffs) == 11 and max(diffs) < 0.03  # resize by torch vs Pillow: documented tolerance
