"""Rate control: the lowest passing quality (checked against an exhaustive sweep), the folder job, curves, BD-rate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import natural_image, require_shared
from imutility.cli import EXIT_SKIPPED, main
from imutility.distort import JPEG
from imutility.evaluation.curves import bd_rate, lowest_passing
from imutility.rate import NetworkOracle, RateControlError, compress, compress_many


def quality_scorer(images):
    """A stand-in predictor that reads the compression back from the pixels' blockiness."""
    out = []
    for im in images:
        a = np.asarray(im, dtype=float)
        out.append(1.0 - min(1.0, np.abs(np.diff(a[:, ::8], axis=1)).mean() / 40))
    return np.asarray(out)


def test_search_against_an_exhaustive_sweep_on_a_real_photo():
    """The real predictor on a real photo: the exhaustive search is the true lowest passing quality of the sweep
    for every threshold and monotone in it; bisection returns a passing quality, the exact one whenever the score
    crosses the threshold once (it does not on this photo's noisy transition: documented, docs/compress.md)."""
    from imutility.images import load_image
    from imutility.predictor import Predictor

    img = load_image(require_shared("data", "photos", "horses.jpg"))
    p = Predictor.load("default")
    sweep = p([JPEG(q)(img).image for q in range(1, 96)])
    exact = []
    for t in (0.05, 0.35, 0.65, 0.95):
        passing = np.flatnonzero(sweep >= t) + 1
        ex = compress(img, t, p, search="exhaustive")
        assert ex.quality == (passing[0] if len(passing) else 95) and ex.encodes == 95
        exact.append(ex.quality)
        bi = compress(img, t, p)
        assert bi.encodes <= 9 and bi.data == JPEG(bi.quality)(img).data  # the very bytes of that quality
        assert bi.satisfied and bi.utility >= t and bi.quality >= ex.quality
        if list(passing) == list(range(passing[0], 96)):  # crossed once: bisection is exact
            assert bi.quality == ex.quality
    assert exact == sorted(exact)


def test_bisection_is_exact_where_the_score_crosses_once():
    img = natural_image(320, 240, seed=3)
    ref = np.asarray(img, dtype=float)

    def fidelity(images):  # 1 - mean absolute error / 20: grows with JPEG quality (one tiny libjpeg dip aside)
        return np.array([1 - min(1.0, np.abs(np.asarray(im, dtype=float) - ref).mean() / 20) for im in images])

    sweep = fidelity([JPEG(q)(img).image for q in range(1, 96)])
    exact = 0
    for t in np.linspace(0.2, 0.8, 10):
        passing = np.flatnonzero(sweep >= t) + 1
        if len(passing) and list(passing) == list(range(passing[0], 96)):
            assert compress(img, float(t), fidelity).quality == passing[0]
            exact += 1
    assert exact >= 8


def test_unsatisfiable_and_bad_settings():
    img = natural_image(160, 120)
    r = compress(img, 1.0, lambda ims: np.zeros(len(ims)), max_quality=60)
    assert not r.satisfied and r.quality == 60 and r.encodes == 1
    r = compress(img, 0.0, quality_scorer)
    assert r.satisfied and r.quality == 1  # everything passes 0: the lowest quality
    ex = compress(img, 0.7, quality_scorer, search="exhaustive")
    bi = compress(img, 0.7, quality_scorer)
    assert ex.quality == bi.quality and ex.encodes == 95 and bi.encodes < 10
    w = compress(img, 0.5, quality_scorer, codec="webp", min_quality=0)
    assert w.suffix == ".webp" and w.data[:4] == b"RIFF"
    for kw in ({"min_utility": 1.5}, {"min_utility": float("nan")}, {"codec": "png"},
               {"min_quality": 50, "max_quality": 40}, {"search": "random"}):
        with pytest.raises(RateControlError):
            compress(img, **{"min_utility": 0.5, **kw, "predictor": quality_scorer})


def test_lockstep_search_equals_one_image_at_a_time_and_batches_across_images():
    """compress_many gives each image compress's result (bytes, quality, score, encodes) while the scorer sees
    several images per call, with and without encoding threads; images with their own scorers (an oracle) are
    scored apart; a bad batch size is refused."""
    images = [natural_image(160 + 16 * i, 120, seed=i) for i in range(7)]
    calls: list[int] = []

    def counting(ims):
        calls.append(len(ims))
        return quality_scorer(ims)

    for search in ("bisect", "exhaustive"):
        ref = {i: compress(im, 0.7, quality_scorer, search=search, max_quality=60) for i, im in enumerate(images)}
        for workers in (0, 2):
            calls.clear()
            got = dict(compress_many(enumerate(images), 0.7, lambda _im: counting, search=search, max_quality=60,
                                     batch_size=4, workers=workers))
            assert got.keys() == ref.keys()
            for i, r in ref.items():
                assert (got[i].data, got[i].quality, got[i].encodes, got[i].satisfied) == \
                    (r.data, r.quality, r.encodes, r.satisfied)
                assert got[i].utility == pytest.approx(r.utility)
            assert sum(calls) == sum(r.encodes for r in ref.values())  # no candidate scored twice
            assert max(calls) > 1 and len(calls) < sum(calls) / 2  # batched across images
            assert max(calls) <= 4  # never more than batch_size candidates at once (exhaustive rounds too)
    own = {}

    def scorer_for(im):  # one scorer per image, like NetworkOracle.scorer(pristine)
        own[id(im)] = []
        return lambda ims: own[id(im)].append(len(ims)) or quality_scorer(ims)

    got = dict(compress_many(enumerate(images), 0.7, scorer_for, max_quality=60, batch_size=4))
    assert [got[i].quality for i in range(7)] == [compress(im, 0.7, quality_scorer, max_quality=60).quality
                                                  for im in images]
    assert all(n == 1 for c in own.values() for n in c)  # each image's scorer saw only its own candidates
    with pytest.raises(RateControlError):
        list(compress_many(enumerate(images), 0.7, scorer_for, batch_size=0))


def test_network_oracle_is_one_on_the_pristine_image():
    from imutility import zoo
    from imutility.images import load_image

    require_shared("models")
    img = load_image(require_shared("data", "photos", "parrot.jpg"))
    one = NetworkOracle(zoo.get_labeler("mobilenet_v2")).scorer(img)
    s = one([img, JPEG(95)(img).image, JPEG(2)(img).image])
    assert s[0] == pytest.approx(1.0) and s[1] > 0.8 and s[2] < s[1]
    other = NetworkOracle(zoo.get_labeler("mobilenet_v3_small")).scorer(img)
    both = NetworkOracle([zoo.get_labeler("mobilenet_v2"), zoo.get_labeler("mobilenet_v3_small")]).scorer(img)
    imgs = [JPEG(q)(img).image for q in (3, 20)]
    np.testing.assert_allclose(both(imgs), (one(imgs) + other(imgs)) / 2, atol=1e-6)  # an ensemble: the mean


def test_compress_folder_cli(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        natural_image(200, 150, seed=i).save(src / f"{i}.png")
    natural_image(96, 64).save(src / "sub" / "a.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    out = tmp_path / "out"
    assert main(["compress", str(src), str(out), "--min-utility", "1.5"]) == 2
    rc = main(["compress", str(src), str(out), "--min-utility", "0.5", "--max-quality", "80", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == EXIT_SKIPPED and "broken.jpg" in cap.err
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source"] for r in rows) == ["0.png", "1.png", "2.png", "sub/a.png"]
    for r in rows:
        data = (out / r["path"]).read_bytes()
        assert data[:2] == b"\xff\xd8" and len(data) == int(r["bytes"]) and 1 <= int(r["quality"]) <= 80
        assert int(r["satisfied"]) == (float(r["utility"]) >= 0.5)
    # a rerun resumes (nothing redone); other settings are refused
    assert main(["compress", str(src), str(out), "--min-utility", "0.5", "--max-quality", "80", "--no-progress"]) == 3
    assert "4 already done" in capsys.readouterr().out
    assert main(["compress", str(src), str(out), "--min-utility", "0.6", "--no-progress"]) == 1
    assert not list(out.rglob("*.tmp"))
    # searched two at a time with encoding threads: the same manifest and the same files
    other = tmp_path / "other"
    assert main(["compress", str(src), str(other), "--min-utility", "0.5", "--max-quality", "80", "--no-progress",
                 "--batch-size", "2", "-j", "2"]) == EXIT_SKIPPED
    assert (other / "manifest.csv").read_text() == (out / "manifest.csv").read_text()
    assert all((other / r["path"]).read_bytes() == (out / r["path"]).read_bytes() for r in rows)


def test_lowest_passing_and_bd_rate_by_hand():
    v = np.array([[0.1, 0.6, 0.9], [0.0, 0.1, 0.2], [0.7, 0.8, 0.9]])
    np.testing.assert_array_equal(lowest_passing(v, 0.5), [1, 2, 0])  # none passes: the top level
    ref = [(r, a) for r, a in zip([0.3, 0.5, 0.8, 1.2, 2.0], [0.40, 0.55, 0.65, 0.72, 0.75], strict=True)]
    cheaper = [(0.8 * r, a) for r, a in ref]  # the same accuracies at 80 % of the bits
    assert bd_rate(ref, cheaper) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(bd_rate(ref, cheaper, low=0.9))  # no shared accuracy above 0.9


def test_curves_cli_on_a_labelled_ladder(tmp_path, capsys):
    require_shared("models")
    src = require_shared("data", "imagenet-sample")
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(src.iterdir())[::100]:
        (photos / p.name).write_bytes(p.read_bytes())
    labels = tmp_path / "labels"
    assert main(["label", str(labels), "--task", "classification", "--data", str(photos), "--labelers", "mobilenet_v2",
                 "--held-out", "mobilenet_v3_small", "-d", "jpeg:q=3", "-d", "jpeg:q=10", "-d", "jpeg:q=30",
                 "-d", "jpeg:q=90", "--no-progress"]) == 0
    out = tmp_path / "curves"
    assert main(["curves", str(labels), "--out", str(out), "--predictor", "default=default"]) == 0
    r = json.loads((out / "curves.json").read_text())
    net = r["networks"]["mobilenet_v3_small"]
    fixed = net["curves"]["fixed quality"]
    assert len(fixed) == 4 and [p[0] for p in fixed] == sorted(p[0] for p in fixed)  # one point per level
    import pandas as pd

    t = pd.read_parquet(labels / "labels.parquet")
    at90 = t[t["level"] == 90]
    top1 = float((at90["mobilenet_v3_small.pred"] == at90["target"]).mean())
    assert any(p[1] == pytest.approx(top1) and p[0] == pytest.approx(at90["bpp"].mean()) for p in fixed)
    assert (out / "rate_accuracy.png").stat().st_size > 10_000


def test_detection_curves_score_mAP_of_the_chosen_images(tmp_path):
    from imutility.datasets import CocoDetectionDataset
    from imutility.filtering import CocoScorer

    require_shared("models")
    js = require_shared("data", "coco2017-val128", "instances.json")
    labels = tmp_path / "labels"
    assert main(["label", str(labels), "--task", "detection", "--data", str(js), "--labelers", "yolox_nano",
                 "--held-out", "fastestdet", "-d", "jpeg:q=5", "-d", "jpeg:q=30", "-d", "jpeg:q=90", "--limit", "6",
                 "--no-progress"]) == 0
    out = tmp_path / "curves"
    assert main(["curves", str(labels), "--out", str(out), "--predictor", "det=default-detection"]) == 0
    net = json.loads((out / "curves.json").read_text())["networks"]["fastestdet"]
    import pandas as pd

    from imutility.labelling import read_outputs, read_sources

    t = pd.read_parquet(labels / "labels.parquet")
    at = t[t["level"] == 30]
    src = {s.key: s for s in read_sources(labels)}
    cache = read_outputs(labels, "fastestdet")
    gt = [(np.asarray(src[k].boxes).reshape(-1, 4), list(src[k].labels)) for k in at["key"]]
    want = CocoScorer(gt).score([cache[(k, "jpeg:q=30")] for k in at["key"]])[0]
    assert any(p[1] == pytest.approx(want) and p[0] == pytest.approx(at["bpp"].mean())
               for p in net["curves"]["fixed quality"])
    assert len(CocoDetectionDataset.from_json(js)) >= 6
