"""Labelling pipeline: real labelers on real photos, relabel without inference, resume after kill -9,
bad images, a failing labeler, class balancing; and the full-reference measure."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import natural_image, require_shared
from imutility import zoo
from imutility.cli import EXIT_SKIPPED, main
from imutility.distort import parse_distortion
from imutility.labelling import (
    LabellingConfigError,
    Thresholds,
    apply_augment,
    build_table,
    relabel,
    run_labelling,
    sources_from_classification,
    sources_from_coco,
)
from imutility.utility import detection_label

LEVELS = [parse_distortion(s) for s in ("jpeg:q=2", "jpeg:q=12", "jpeg:q=90")]


@pytest.fixture(scope="module")
def tflite_pair():
    require_shared("models")
    return [zoo.get_labeler("mobilenet_v2"), zoo.get_labeler("mobilenet_v1_075")]


@pytest.fixture
def imagenet_folder(tmp_path):
    """A private copy of 8 ImageNet sample photos (the pipeline never writes beside its sources)."""
    src = require_shared("data", "imagenet-sample")
    d = tmp_path / "imagenet"
    d.mkdir()
    for p in sorted(src.iterdir())[::125]:
        shutil.copy(p, d / p.name)
    return d


def classification_run(folder, out, labelers, **kw):
    from imutility.datasets import ClassificationDataset

    ds = ClassificationDataset.from_folder(folder)
    return run_labelling("classification", sources_from_classification(ds), LEVELS, labelers, out,
                         progress=False, **kw)


def test_classification_labels_follow_the_equations(imagenet_folder, tmp_path, tflite_pair):
    rep = classification_run(imagenet_folder, tmp_path / "out", tflite_pair)
    t = pd.read_parquet(rep.table)
    assert len(t) == 8 * 3 == rep.n_rows and not rep.errors
    for name in ("mobilenet_v2", "mobilenet_v1_075"):
        # Eq. 5 and Eq. 2 written out here, independently of imutility.utility, from the raw cached outputs
        cache = {(r["k"], r["d"]): r for line in (tmp_path / "out" / "cache" / f"{name}.jsonl").read_text().splitlines()
                 for r in json.loads(line)["records"]}
        for _, row in t.iterrows():
            r0, r1 = cache[(row["key"], "pristine")], cache[(row["key"], row["distortion"])]
            target, phi, phi0 = row["target"], r1["pt"], r0["pt"]
            if r0["top"][0] != target:
                want = None  # pristine decision wrong: excluded
            elif r1["top"][0] == target and phi > 0.9:
                want = 1.0
            elif r1["top"][0] != target and phi < 0.1:
                want = 0.0
            else:
                want = None  # the CCSP rule leaves it undecided
            got = row[f"{name}.label"]
            assert (want is None and math.isnan(got)) or got == want, (row["key"], row["distortion"], got, want)
            assert row[f"{name}.utility"] == pytest.approx((phi - 0.5) / (1 - (phi0 - 0.5)))  # Eq. 2 as printed
        assert (t[f"{name}.top5"].map(lambda x: x[0]) == t[f"{name}.pred"]).all()
    both = t[["mobilenet_v2.label", "mobilenet_v1_075.label"]].to_numpy()
    agree = (both[:, 0] == both[:, 1])
    np.testing.assert_array_equal(np.where(agree, both[:, 0], np.nan), t["label"].to_numpy())
    by_level = t.groupby("level")["utility_mean"].mean()
    assert by_level[90.0] > by_level[12.0] > by_level[2.0]  # utility falls with quality
    assert (t.groupby("level")["bpp"].mean().diff().dropna() > 0).all()
    for p in t["path"]:
        assert (tmp_path / "out" / p).read_bytes()[:2] == b"\xff\xd8"
    counts = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert set(counts["labeler"]) == {"mobilenet_v2", "mobilenet_v1_075", "combined"}
    assert (counts["useful"] + counts["non_useful"] + counts["excluded"] == counts["n"]).all()
    assert (tmp_path / "out" / "utility_by_level.png").stat().st_size > 10_000


def test_relabel_needs_no_model(imagenet_folder, tmp_path, tflite_pair, monkeypatch):
    out = tmp_path / "out"
    classification_run(imagenet_folder, out, tflite_pair)
    before = pd.read_parquet(out / "labels.parquet")
    monkeypatch.setattr(zoo, "get_labeler", lambda *a, **k: pytest.fail("relabel must not build a model"))
    t0 = time.perf_counter()
    loose = relabel(out, Thresholds(th=0.5, tl=0.3))
    assert time.perf_counter() - t0 < 10
    assert (loose["mobilenet_v2.label"] == 1).sum() >= (before["mobilenet_v2.label"] == 1).sum()
    assert main(["relabel", str(out)]) == 0  # back to the paper's thresholds: the original table
    pd.testing.assert_frame_equal(pd.read_parquet(out / "labels.parquet"), before)


def test_rerun_with_other_labelers_is_refused(imagenet_folder, tmp_path, tflite_pair):
    classification_run(imagenet_folder, tmp_path / "out", tflite_pair[:1])
    with pytest.raises(LabellingConfigError, match="labelers"):
        classification_run(imagenet_folder, tmp_path / "out", tflite_pair)


def test_kill_dash_9_then_resume_equals_uninterrupted_run(imagenet_folder, tmp_path):
    require_shared("models")
    args = ["--task", "classification", "--data", str(imagenet_folder), "--labelers", "mobilenet_v2,squeezenet1_1",
            "-d", "jpeg:q=3", "-d", "jpeg:q=20", "--chunk", "1", "--no-progress"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "imutility", "label", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "cache" / "mobilenet_v2.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (journal.exists() and journal.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= journal.read_text().count("\n") < 8, "killed too late to test resumption"
    assert not (out / "labels.parquet").exists()
    assert main(["label", str(out), *args]) == 0
    ref = tmp_path / "reference"
    assert main(["label", str(ref), *args]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "labels.parquet"), pd.read_parquet(ref / "labels.parquet"))


def test_bad_images_are_reported_and_skipped(imagenet_folder, tmp_path, tflite_pair, capsys):
    (imagenet_folder / "n01443537_broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (imagenet_folder / "n01484850_empty.JPEG").write_bytes(b"")
    rep = classification_run(imagenet_folder, tmp_path / "out", tflite_pair)
    assert sorted(k for k, _ in rep.errors) == ["n01443537_broken.JPEG", "n01484850_empty.JPEG"]
    assert rep.n_rows == 8 * 3
    rc = main(["label", str(tmp_path / "cli"), "--task", "classification", "--data", str(imagenet_folder),
               "--labelers", "mobilenet_v2", "-d", "jpeg:q=10", "--no-progress"])
    assert rc == EXIT_SKIPPED
    assert "skipped n01484850_empty.JPEG" in capsys.readouterr().err


def test_a_failing_labeler_loses_only_its_own_outputs(imagenet_folder, tmp_path, tflite_pair):
    class Fragile:
        """Wraps a real labeler and fails on any batch holding a 1-pixel-wide image."""

        def __init__(self, inner):
            self.inner, self.name, self.task, self.spec = inner, "fragile", inner.task, inner.spec

        def __call__(self, images):
            if any(im.width == 1 for im in images):
                raise RuntimeError("cannot handle 1-pixel images")
            return self.inner(images)

    natural_image(1, 300).save(imagenet_folder / "n01440764_thin.png")
    rep = classification_run(imagenet_folder, tmp_path / "out", [Fragile(tflite_pair[0]), tflite_pair[1]])
    assert rep.labeler_errors == 4  # pristine + 3 levels of the thin image
    t = pd.read_parquet(rep.table)
    thin = t["key"] == "n01440764_thin.png"
    assert t.loc[thin, "fragile.label"].isna().all() and t.loc[thin, "fragile.ccsp"].isna().all()
    assert t.loc[thin, "mobilenet_v1_075.ccsp"].notna().all()
    assert t.loc[~thin, "fragile.ccsp"].notna().all()
    # a failed output is missing, not a class index, and so not a wrong answer in top-1 (Fig. 2)
    assert t.loc[thin, "fragile.pred"].isna().all() and t.loc[thin, "fragile.pristine_pred"].isna().all()
    assert t.loc[~thin, "fragile.pred"].notna().all()
    from imutility.filtering import top1_correct

    valid, correct = top1_correct(t, "fragile")
    assert not valid[thin.to_numpy()].any() and valid[~thin.to_numpy()].all()
    assert correct.mean() == pytest.approx((t.loc[~thin, "fragile.pred"] == t.loc[~thin, "target"]).mean())


def test_balancing_adds_relabelled_augmented_copies(imagenet_folder, tmp_path, tflite_pair):
    rep = classification_run(imagenet_folder, tmp_path / "out", tflite_pair[:1], balance=True)
    t = pd.read_parquet(rep.table)
    aug = t[t["augment"].notna()]
    assert rep.n_augmented == len(aug) > 0
    base = t[t["augment"].isna()]
    assert len(aug) <= (base["label"] == 1).sum() - (base["label"] == 0).sum()
    zero_pairs = set(map(tuple, base.loc[base["label"] == 0, ["source", "distortion"]].to_numpy()))
    assert set(map(tuple, aug[["source", "distortion"]].to_numpy())) <= zero_pairs
    assert aug["mobilenet_v2.ccsp"].notna().all()  # measured by the model, not copied


def test_augmentations_move_boxes_with_pixels():
    img = natural_image(100, 50)
    boxes = np.array([[10.0, 5, 30, 25]])
    flipped, fb = apply_augment(img, boxes, "flip")
    np.testing.assert_allclose(fb, [[70, 5, 90, 25]])
    assert np.array_equal(np.asarray(flipped)[:, ::-1], np.asarray(img))
    cropped, cb = apply_augment(img, boxes, "crop:0.5:3")
    assert cropped.size == (50, 25)
    assert (cb >= 0).all() and (cb[:, 2] <= 50).all()


def test_detection_labels_follow_eq6(tmp_path):
    from imutility.datasets import CocoDetectionDataset

    require_shared("models")
    ds = CocoDetectionDataset.from_json(require_shared("data", "coco2017-val128", "instances.json"))
    sources = sources_from_coco(ds)[:4]
    labs = [zoo.get_labeler("yolox_nano"), zoo.get_labeler("fastestdet")]
    rep = run_labelling("detection", sources, LEVELS, labs, tmp_path / "out", progress=False)
    t = pd.read_parquet(rep.table)
    assert len(t) == 12
    cache = {}
    for line in (tmp_path / "out" / "cache" / "yolox_nano.jsonl").read_text().splitlines():
        for r in json.loads(line)["records"]:
            cache[(r["k"], r["d"])] = {"boxes": np.asarray(r["b"]).reshape(-1, 4), "labels": np.asarray(r["l"]),
                                       "scores": np.asarray(r["s"])}
    by_key = {s.key: s for s in sources}
    for _, row in t.iterrows():
        s = by_key[row["key"]]
        gt_b, gt_l = np.asarray(s.boxes).reshape(-1, 4), np.asarray(s.labels)
        want = detection_label(gt_b, gt_l, cache[(s.key, "pristine")], cache[(s.key, row["distortion"])])
        got = row["yolox_nano.label"]
        assert (math.isnan(want) and math.isnan(got)) or want == got
        assert len(row["yolox_nano.phi_g"]) == row["n_gt"] == len(row["yolox_nano.iou_g"])
        # the detector's own confidence (a benchmark baseline and its control): its highest score, 0 for none
        for col, d in (("yolox_nano.p5", row["distortion"]), ("yolox_nano.pristine_p5", "pristine")):
            scores = cache[(s.key, d)]["scores"]
            assert list(row[col]) == [pytest.approx(scores.max() if len(scores) else 0.0)]
    assert t.groupby("level")["yolox_nano.found"].mean()[90.0] >= t.groupby("level")["yolox_nano.found"].mean()[2.0]


def test_table_does_not_depend_on_the_order_work_finished(imagenet_folder, tmp_path, tflite_pair):
    """Chunks finish in any order after a resume: the journals' line order must not change the table."""
    import random

    out = tmp_path / "out"
    classification_run(imagenet_folder, out, tflite_pair[:1], chunk_size=2)
    written = pd.read_parquet(out / "labels.parquet")
    for f in (out / "cache").glob("*.jsonl"):
        lines = f.read_text().splitlines(keepends=True)
        assert len(lines) >= 3
        random.Random(0).shuffle(lines)
        f.write_text("".join(lines))
    pd.testing.assert_frame_equal(build_table(out), written)


# ---------------------------------------------------------------------------------- full-reference measure
def test_measure_identical_and_compressed_pairs(tflite_pair):
    from imutility.distort import JPEG
    from imutility.images import load_image
    from imutility.measure import measure_pairs

    img = load_image(require_shared("data", "photos", "parrot.jpg"))
    bad = JPEG(2)(img).image
    same, worse = measure_pairs([img, img], [img, bad], tflite_pair, op="mean")
    for name, u in same.per_labeler.items():
        phi_ref = same.details[name]["phi_ref"]
        assert u == pytest.approx((phi_ref - 0.5) / (1 - phi_ref + 0.5), abs=1e-9)  # Eq. 2 at phi = phi'
        assert worse.per_labeler[name] < u
    assert same.combined == pytest.approx(np.mean(list(same.per_labeler.values())))


def test_measure_cli_on_folders(tmp_path, capsys):
    require_shared("models")
    photos = require_shared("data", "photos")
    assert main(["distort", str(photos), str(tmp_path / "d"), "-d", "jpeg:q=5", "--no-progress"]) == 0
    rc = main(["measure", str(photos), str(tmp_path / "d" / "jpeg_q5"), "--task", "detection",
               "--labelers", "yolox_nano,fastestdet", "--op", "min", "--json"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == 6
    for r in lines:
        vals = [v for v in r["per_labeler"].values() if not math.isnan(v)]
        if vals:
            assert r["combined"] == pytest.approx(min(vals))


def test_coco_images_missing_or_unannotated_are_reported(tmp_path, capsys):
    require_shared("models")
    (tmp_path / "images").mkdir()
    natural_image(120, 90).save(tmp_path / "images" / "a.jpg")
    natural_image(120, 90).save(tmp_path / "images" / "stray.jpg")  # on disk, not in the json
    js = tmp_path / "instances.json"
    js.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 90},
                   {"id": 2, "file_name": "gone.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 10, 50, 40], "area": 2000,
                         "iscrowd": 0}],
        "categories": [{"id": 18, "name": "dog"}]}))
    rc = main(["label", str(tmp_path / "out"), "--task", "detection", "--data", str(js), "--labelers", "fastestdet",
               "-d", "jpeg:q=10", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "gone.jpg: listed in" in err and "stray.jpg: not in the annotations" in err
    assert len(pd.read_parquet(tmp_path / "out" / "labels.parquet")) == 1


def test_measure_with_ground_truth(tmp_path, capsys):
    require_shared("models")
    photos = require_shared("data", "photos")
    pristine = tmp_path / "p"
    pristine.mkdir()
    for name in ("parrot.jpg", "dog.jpg"):
        shutil.copy(photos / name, pristine / name)
    assert main(["distort", str(pristine), str(tmp_path / "d"), "-d", "jpeg:q=3", "--no-progress"]) == 0
    gt = tmp_path / "gt.txt"
    gt.write_text("parrot.jpg 88\n")  # macaw; dog.jpg has no entry
    rc = main(["measure", str(pristine), str(tmp_path / "d" / "jpeg_q3"), "--task", "classification",
               "--labelers", "mobilenet_v2", "--labels-file", str(gt), "--json"])
    cap = capsys.readouterr()
    assert rc == EXIT_SKIPPED and "dog.jpg: no ground truth" in cap.err
    (r,) = [json.loads(x) for x in cap.out.splitlines() if x.startswith("{")]
    assert r["details"]["mobilenet_v2"]["reference_class"] == 88


def test_measure_with_coco_annotations(tmp_path, capsys):
    require_shared("models")
    coco = require_shared("data", "coco2017-val128")
    pristine = tmp_path / "p"
    pristine.mkdir()
    names = sorted(p.name for p in (coco / "images").iterdir())[:2]
    for n in names:
        shutil.copy(coco / "images" / n, pristine / n)
    assert main(["distort", str(pristine), str(tmp_path / "d"), "-d", "jpeg:q=50", "--no-progress"]) == 0
    rc = main(["measure", str(pristine), str(tmp_path / "d" / "jpeg_q50"), "--task", "detection",
               "--labelers", "yolox_nano", "--annotations", str(coco / "instances.json"), "--json"])
    assert rc == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(rows) == 2
    from imutility.measure import coco_annotations_by_file

    ann = coco_annotations_by_file(coco / "instances.json")
    for r in rows:
        assert r["details"]["yolox_nano"]["n_reference"] == len(ann[Path(r["pristine"]).name]["labels"])


# ---------------------------------------------------------------------------------- data integrity
def test_hostile_coco_file_names_write_inside_out(tmp_path):
    """Absolute and '..' file names in a COCO json: every distorted file lands inside OUT, the user's
    photos are untouched, and each table path is a distorted file (not the pristine photo)."""
    require_shared("models")
    images, outside = tmp_path / "set" / "images", tmp_path / "elsewhere"
    images.mkdir(parents=True)
    outside.mkdir()
    natural_image(160, 120, seed=1).save(outside / "abs.jpg", quality=95)
    natural_image(160, 120, seed=2).save(tmp_path / "set" / "up.jpg", quality=95)
    natural_image(160, 120, seed=3).save(images / "plain.jpg", quality=95)
    before = {p: p.read_bytes() for p in (outside / "abs.jpg", tmp_path / "set" / "up.jpg", images / "plain.jpg")}
    names = [str(outside / "abs.jpg"), "../up.jpg", "plain.jpg"]
    js = tmp_path / "set" / "instances.json"
    js.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": n, "width": 160, "height": 120} for i, n in enumerate(names)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 18, "bbox": [10, 10, 60, 50], "area": 3000,
                         "iscrowd": 0} for i in range(3)],
        "categories": [{"id": 18, "name": "dog"}]}))
    out = tmp_path / "out"
    rc = main(["label", str(out), "--task", "detection", "--data", str(js), "--labelers", "fastestdet",
               "-d", "jpeg:q=2", "--no-progress"])
    assert rc == 0
    t = pd.read_parquet(out / "labels.parquet")
    assert len(t) == 3
    for p in t["path"]:
        f = (out / p).resolve()
        assert f.is_relative_to(out.resolve()) and f.read_bytes()[:2] == b"\xff\xd8"
        assert f.stat().st_size < min(len(b) for b in before.values())  # q=2, not a copy of a q=95 photo
    assert {p: p.read_bytes() for p in before} == before
    assert not [p for p in tmp_path.rglob("*.jpg") if not p.resolve().is_relative_to(out.resolve())
                and p not in before]


def test_same_stem_photos_keep_their_own_distorted_files(tmp_path, tflite_pair):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(["n01440764_x.jpg", "n01440764_x.JPG", "n01440764_x.png", "n01440764_x_jpg.png"]):
        natural_image(200, 150, seed=i).save(folder / name, format="PNG" if name.endswith("png") else "JPEG")
    rep = classification_run(folder, tmp_path / "out", tflite_pair[:1])
    t = pd.read_parquet(rep.table)
    assert len(t) == 4 * 3 and t["path"].nunique() == 12
    from imutility.images import load_image

    for _, row in t[t["level"] == 90].iterrows():  # q=90 looks like its own source, not another one
        out = np.asarray(load_image(tmp_path / "out" / row["path"]), dtype=float)
        errs = {p.name: np.abs(out - np.asarray(load_image(p), dtype=float)).mean() for p in folder.iterdir()}
        assert min(errs, key=errs.get) == row["key"]


def test_measure_pairs_exactly_and_reports_the_rest(tmp_path):
    from imutility.measure import pair_paths

    p, d = tmp_path / "p", tmp_path / "d"
    p.mkdir()
    d.mkdir()
    for n in ("a.jpg", "a.png", "b.png", "c.png"):
        natural_image().save(p / n)
    for n in ("a.jpg", "a.png.jpg", "b.webp", "c.png.jpg", "lonely.jpg", "a.webp"):
        natural_image().save(d / n, format="PNG")
    pairs, unpaired = pair_paths(p, d)
    got = {dd.name: pp.name for pp, dd in pairs}
    assert got == {"a.jpg": "a.jpg", "a.png.jpg": "a.png", "b.webp": "b.png", "c.png.jpg": "c.png"}
    reasons = dict((Path(f).name, r) for f, r in unpaired)
    assert set(reasons) == {"lonely.jpg", "a.webp"}
    assert "no pristine counterpart" in reasons["lonely.jpg"] and "several" in reasons["a.webp"]


# ---------------------------------------------------------------------------------- held-out networks, no labels
def test_reference_free_labels_on_an_unlabelled_folder(tmp_path, tflite_pair):
    """Photos without any class label: the labelers' agreed pristine class is the reference."""
    src = require_shared("data", "imagenet-sample")
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, p in enumerate(sorted(src.iterdir())[::100]):
        shutil.copy(p, folder / f"holiday_{i}.jpg")  # no synset in the name: no ground truth
    with pytest.raises(ValueError, match="no labelled images"):
        classification_run(folder, tmp_path / "gt", tflite_pair)
    out = tmp_path / "out"
    rc = main(["label", str(out), "--task", "classification", "--data", str(folder), "--reference", "pristine",
               "--labelers", "mobilenet_v2,mobilenet_v1_075", "--held-out", "mobilenet_v3_small",
               "-d", "jpeg:q=2", "-d", "jpeg:q=50", "--no-progress"])
    assert rc == 0
    t = pd.read_parquet(out / "labels.parquet")
    assert json.loads((out / "config.json").read_text())["reference"] == "pristine"
    top0 = {n: t[f"{n}.pristine_top5"].map(lambda v: v[0] if v is not None else None) for n in ("mobilenet_v2",)}
    agree = t["target"].notna()
    assert agree.sum() >= 4  # the two classifiers agree on most of these photos
    assert (t.loc[agree, "target"].astype(int) == top0["mobilenet_v2"][agree].astype(int)).all()
    # where they agree, the photo is pristine-correct by construction and gets a label at q=50
    assert t.loc[agree & (t["level"] == 50), "label"].notna().any()
    assert t.loc[~agree, "label"].isna().all()
    # the held-out network has its columns but no say in the label
    assert "mobilenet_v3_small.pred" in t and "mobilenet_v3_small.label" in t
    expected = np.where(t["mobilenet_v2.label"] == t["mobilenet_v1_075.label"], t["mobilenet_v2.label"], np.nan)
    np.testing.assert_array_equal(t["label"].to_numpy(), expected)
    kept = t["retained_mean"].dropna()
    assert len(kept) and kept.between(0, 1).all()


def test_held_out_networks_change_no_label(imagenet_folder, tmp_path, tflite_pair):
    a = classification_run(imagenet_folder, tmp_path / "a", tflite_pair[:1])
    b = classification_run(imagenet_folder, tmp_path / "b", tflite_pair[:1], held_out=tflite_pair[1:])
    ta, tb = pd.read_parquet(a.table), pd.read_parquet(b.table)
    np.testing.assert_array_equal(ta["label"].to_numpy(), tb["label"].to_numpy())
    np.testing.assert_allclose(ta["confidence_mean"], tb["confidence_mean"])
    assert "mobilenet_v1_075.ccsp" in tb and "mobilenet_v1_075.ccsp" not in ta
    with pytest.raises(ValueError, match="both label and be held out"):
        classification_run(imagenet_folder, tmp_path / "c", tflite_pair, held_out=tflite_pair[1:])


def test_a_damaged_cache_line_is_refused_loudly_then_healed(imagenet_folder, tmp_path, tflite_pair, capsys):
    out = tmp_path / "out"
    ref = classification_run(imagenet_folder, out, tflite_pair[:1], chunk_size=2)
    before = pd.read_parquet(ref.table)
    cache = out / "cache" / "mobilenet_v2.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    assert len(lines) >= 3
    lines[1] = lines[1][:40] + "\n"  # a damaged line in the middle (not a crash's torn tail)
    cache.write_text("".join(lines))
    assert main(["relabel", str(out)]) == 1
    assert "line(s) 2 are damaged" in capsys.readouterr().err
    classification_run(imagenet_folder, out, tflite_pair[:1], chunk_size=2)  # the same run again: redoes it
    assert main(["relabel", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "labels.parquet"), before)


def test_measure_normalised_is_one_at_no_loss(tflite_pair, tmp_path, capsys):
    from imutility.images import load_image
    from imutility.measure import measure_pairs

    img = load_image(require_shared("data", "photos", "parrot.jpg"))
    (plain,) = measure_pairs([img], [img], tflite_pair[:1])
    (norm,) = measure_pairs([img], [img], tflite_pair[:1], normalised=True)
    assert plain.combined < 1 and norm.combined == pytest.approx(1.0)
    img.save(tmp_path / "a.png")
    assert main(["measure", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--task", "classification",
                 "--labelers", "mobilenet_v2", "--normalised"]) == 0
    out = capsys.readouterr().out
    assert "utility: normalised" in out and out.strip().endswith("1.0000")
