"""`imutility benchmark`: predictors beside the cheap rules, within level, with intervals; checked by hand."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import require_shared
from imutility.cli import main


@pytest.fixture(scope="module")
def held_out_labels(tmp_path_factory):
    src = require_shared("data", "imagenet-sample")
    require_shared("models")
    root = tmp_path_factory.mktemp("bench")
    photos = root / "photos"
    photos.mkdir()
    for p in sorted(src.iterdir())[::50]:
        shutil.copy(p, photos / p.name)
    out = root / "labels"
    rc = main(["label", str(out), "--task", "classification", "--data", str(photos), "--labelers",
               "mobilenet_v2,mobilenet_v1_075", "--held-out", "mobilenet_v3_small", "-d", "jpeg:q=3", "-d",
               "jpeg:q=6", "-d", "jpeg:q=50", "--no-progress"])
    assert rc == 0
    return out


def test_benchmark_tables_match_direct_computation(held_out_labels, tmp_path, capsys):
    out = tmp_path / "b"
    rc = main(["benchmark", str(held_out_labels), "--out", str(out), "--predictor", "content=default",
               "--bootstrap", "50"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    st = res["sets"]["labels"]
    t = pd.read_parquet(held_out_labels / "labels.parquet")
    assert st["images"] == len(t) and st["held_out"] == ["mobilenet_v3_small"]
    scores = set(st["label_auroc"])
    assert {"content", "bits per pixel", "JPEG quality (file)", "MSP mobilenet_v3_small",
            "MSP mobilenet_v2 (labeler)"} <= scores
    # the MSP row of one level equals sklearn on that level's labelled rows
    lv = "jpeg:q=6"
    g = t[(t["distortion"] == lv) & t["label"].notna()]
    msp = g["mobilenet_v3_small.p5"].map(lambda v: v[0])
    if g["label"].nunique() == 2:
        assert st["label_auroc"]["MSP mobilenet_v3_small"][lv]["value"] == pytest.approx(roc_auc_score(g["label"], msp))
    # the JPEG quality is constant within a level: exactly chance there
    for d in st["levels"]:
        v = st["label_auroc"]["JPEG quality (file)"][d]["value"]
        assert v is None or v == pytest.approx(0.5)
    # correctness of the held-out network, and matched rejection counts equal the predictor's own rejections
    correct = (t["mobilenet_v3_small.pred"] == t["target"]).to_numpy(dtype=float)
    (cached,) = (out / "scores" / "labels").glob("content-*.parquet")
    scored = pd.read_parquet(cached).set_index("path").loc[t["path"], "score"]
    m = st["unseen"]["mobilenet_v3_small"]["matched"]["content"]
    for d, k in m["n_reject"].items():
        assert k == int((scored[(t["distortion"] == d).to_numpy()] < 0.5).sum())
    pooled = st["unseen"]["mobilenet_v3_small"]["auroc"]["bits per pixel"]["pooled"]["value"]
    assert pooled == pytest.approx(roc_auc_score(correct, t["bpp"]))
    # the compression-blind control: the predictor's own score on each row's pristine photo
    from imutility.predictor import Predictor

    control = st["label_auroc"]["control: content on the pristine photo"]
    assert control["pooled"]["value"] is not None
    (ctl_cache,) = (out / "scores" / "labels-pristine").glob("content-*.parquet")
    ctl = pd.read_parquet(ctl_cache).set_index("path")["score"]
    first = sorted(set(t["source"]))[:2]
    direct = Predictor.load("default")(first)
    np.testing.assert_allclose(ctl.loc[first].to_numpy(), direct, atol=1e-5)
    frr = st["pristine_false_rejects"]["content"]
    right = t.drop_duplicates("source")
    right = right[(right["mobilenet_v3_small.pristine_pred"] == right["target"]).to_numpy(dtype=bool)]
    assert frr["n"] == len(right) and frr["rejected"] == int((ctl.loc[right["source"]] < 0.5).sum())
    assert 0 < m["kept_share"]["pooled"] <= 1
    # the decision lost BY compression: the same AUROC on the rows whose pristine photo the network gets right
    given = st["unseen"]["mobilenet_v3_small"]["given_pristine_success"]
    kept = (t["mobilenet_v3_small.pristine_pred"] == t["target"]).to_numpy(dtype=bool)
    assert given["images"] == int(kept.sum()) < len(t)
    assert given["auroc"]["bits per pixel"]["pooled"]["value"] == pytest.approx(
        roc_auc_score(correct[kept], t["bpp"][kept]))
    assert "random" in m["top1"]
    report = (out / "report.md").read_text()
    assert "## labels" in report and "content" in report and (out / "within_level_auroc.png").stat().st_size > 10_000
    # a rerun reuses the cached scores
    capsys.readouterr()
    assert main(["benchmark", str(held_out_labels), "--out", str(out), "--predictor", "content=default",
                 "--bootstrap", "50"]) == 0
    assert "scoring" not in capsys.readouterr().err
    assert np.isfinite(scored).all()


def test_one_predictor_in_two_precisions_side_by_side(held_out_labels, tmp_path, capsys):
    """--precision NAME=int8 scores that contender with the int8 backbone (its own cache, its own scores);
    a precision for a name that is not a contender is refused."""
    out = tmp_path / "b"
    args = ["benchmark", str(held_out_labels), "--out", str(out), "--predictor", "fp32=default",
            "--predictor", "int8=default", "--bootstrap", "20"]
    assert main([*args, "--precision", "nope=int8"]) == 2  # a usage error
    assert "nope" in capsys.readouterr().err
    assert main([*args, "--precision", "int8=int8"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["precisions"] == {"int8": "int8"}
    fp32 = pd.read_parquet(next((out / "scores" / "labels").glob("fp32-*.parquet")))
    int8 = pd.read_parquet(next((out / "scores" / "labels").glob("int8-*-int8.parquet")))
    d = np.abs(fp32["score"].to_numpy() - int8["score"].to_numpy())
    assert d.max() > 1e-5 and d.mean() < 0.1


def test_pristine_false_reject_rate_on_a_hand_made_table():
    from imutility.evaluation.benchmark import pristine_false_rejects
    from imutility.tasks import get_task

    t = pd.DataFrame({"source": ["a", "a", "b", "b", "c", "c", "d", "d"],
                      "target": [1, 1, 2, 2, 3, 3, 4, 4],
                      "n1.pristine_pred": [1, 1, 2, 2, 0, 0, 4, 4],  # wrong on c
                      "n2.pristine_pred": [1, 1, 2, 2, 3, 3, 0, 0]})  # wrong on d
    control = np.array([0.2, 0.2, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1])  # a rejected; c and d too, but not counted
    r = pristine_false_rejects(control, t, get_task("classification"), ["n1", "n2"])
    assert r == {"n": 2, "rejected": 1, "rate": 0.5}


def test_photo_collections_name_the_data_entry_of_each_photo():
    from imutility.evaluation.benchmark import photo_collections

    t = pd.DataFrame({"source": ["/d/val600/images/a.JPEG", "/d/coco/images/b.jpg", "/elsewhere/c.jpg",
                                 "/d/val600/images/sub/e.JPEG"]})
    got = photo_collections(t, {"dataset": "/d/val600/images;/d/coco/instances.json"})
    assert got.tolist() == ["images", "coco", "other", "images"]
    assert photo_collections(t, {}).tolist() == ["other"] * 4


def test_figures_per_photo_collection_on_two_coco_sets(tmp_path):
    train = require_shared("data", "coco2017-train128", "instances.json")
    val = require_shared("data", "coco2017-val128", "instances.json")
    out = tmp_path / "l"
    assert main(["label", str(out), "--task", "detection", "--data", str(train), "--data", str(val), "--limit", "6",
                 "--labelers", "fastestdet", "--held-out", "yolox_nano", "-d", "jpeg:q=3", "-d", "jpeg:q=8",
                 "--no-progress"]) == 0
    assert main(["benchmark", str(out), "--out", str(tmp_path / "b"), "--predictor", "d=default-detection",
                 "--bootstrap", "20"]) == 0
    st = json.loads((tmp_path / "b" / "results.json").read_text())["sets"]["l"]
    by = st["unseen"]["yolox_nano"]["by_collection"]
    assert set(by) == {"coco2017-train128", "coco2017-val128"} and all(v["photos"] == 6 for v in by.values())
    assert "Per photo collection" in (tmp_path / "b" / "report.md").read_text()
