"""Semantic segmentation, the third task: the utility on hand-made masks, COCO polygons -> VOC masks, the zoo's three
segmenters on a real photo (and their hash check), a user's own segmenter (and its bad specs), and the loop
label -> train -> predict -> measure -> compress on a tiny set."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import natural_image, require_shared
from imutility import zoo
from imutility.cli import EXIT_ERROR, main
from imutility.labelling.store import read_outputs, read_sources
from imutility.tasks import PRISTINE, get_task
from imutility.tasks.segmentation import (
    IGNORE,
    Confusion,
    coco_voc_mask,
    decode_mask,
    encode_mask,
    mask_quality,
    retained_quality,
    segmentation_label,
    to_grid,
)
from imutility.zoo.base import decode_segmentation
from imutility.zoo.custom import CustomSpecError

SEGMENTERS = ["deeplabv3_mnv2_voc", "deeplabv3_mnv2_dm05_voc", "deeplabv3_257_voc"]
DOG = 12


def square(cls: int, top: int, left: int, side: int = 40, size: int = 100) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.uint8)
    m[top:top + side, left:left + side] = cls
    return m


# ---------------------------------------------------------------------------------------------- the utility
def test_identical_masks_keep_everything():
    m = square(DOG, 10, 10)
    assert mask_quality(m, m) == 1.0
    assert retained_quality(mask_quality(m, m), mask_quality(m, m)) == 1.0


def test_background_only_stays_useful_and_a_hallucinated_object_halves_it():
    empty = np.zeros((100, 100), dtype=np.uint8)
    assert mask_quality(empty, empty) == 1.0  # the network found nothing, and still finds nothing
    ghost = square(8, 0, 0, side=20)  # a 4 % "cat" where there is none
    assert mask_quality(ghost, empty) == pytest.approx((0.96 + 0.0) / 2)
    tiny = square(8, 0, 0, side=5)  # 0.25 %: below MIN_AREA, counts only through the background
    assert mask_quality(tiny, empty) == pytest.approx(0.9975)


def test_shifted_and_swapped_masks():
    ref = square(DOG, 10, 10)
    shifted = square(DOG, 10, 30)  # 40x40 square moved by 20 px: overlap 40x20
    inter, union = 800, 1600 + 1600 - 800
    bg_inter = 10000 - 1600 - 1600 + 800
    bg_union = 10000 - 800
    assert mask_quality(shifted, ref) == pytest.approx((inter / union + bg_inter / bg_union) / 2)
    swapped = square(8, 10, 10)  # the right pixels, the wrong class (cat for dog)
    assert mask_quality(swapped, ref) == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_ignored_cells_count_for_nothing():
    ref = square(DOG, 10, 10)
    ref[60:, 60:] = IGNORE
    pred = ref.copy()
    pred[60:, 60:] = 3  # whatever it says where the truth is unknown
    assert mask_quality(pred, ref) == 1.0
    assert np.isnan(mask_quality(pred, np.full_like(ref, IGNORE)))


def test_labels_follow_the_thresholds():
    assert segmentation_label(0.95, 0.8, th=0.9, tl=0.75, minimum=0.5) == 1.0
    assert segmentation_label(0.5, 0.8, th=0.9, tl=0.75, minimum=0.5) == 0.0
    assert np.isnan(segmentation_label(0.8, 0.8, th=0.9, tl=0.75, minimum=0.5))  # between: excluded
    assert np.isnan(segmentation_label(0.95, 0.3, th=0.9, tl=0.75, minimum=0.5))  # pristine already fails
    assert retained_quality(0.9, 0.6) == 1.0 and retained_quality(0.3, 0.6) == 0.5


def test_masks_round_trip_and_grid_keeps_classes():
    m = np.random.default_rng(0).integers(0, 21, (128, 128)).astype(np.uint8)
    assert np.array_equal(decode_mask(encode_mask(m)), m)
    g = to_grid(square(DOG, 100, 100, side=200, size=480))
    assert g.shape == (128, 128) and set(np.unique(g)) == {0, DOG}


def test_dataset_miou_accumulates_over_images():
    c = Confusion()
    ref = square(DOG, 10, 10)
    c.add(ref, ref)
    c.add(np.zeros_like(ref), ref)  # the dog missed entirely on the second image
    dog_iou = 1600 / 3200
    bg_iou = (8400 * 2) / (8400 * 2 + 1600)
    assert c.miou() == pytest.approx((dog_iou + bg_iou) / 2)


def test_decoding_refuses_wrong_shapes_and_class_counts():
    assert decode_segmentation(np.zeros((1, 21, 8, 8)), 21, "logits").mask.shape == (8, 8)
    assert decode_segmentation(np.full((8, 8, 21), 1 / 21), 21, "probs").confidence == pytest.approx(1 / 21)
    with pytest.raises(ValueError, match="C = 21 classes"):
        decode_segmentation(np.zeros((1, 5, 8, 8)), 21, "logits", "mine")
    with pytest.raises(ValueError, match="class map holds index 30"):
        decode_segmentation(np.full((8, 8), 30), 21, "classmap", "mine")
    with pytest.raises(ValueError, match=r"must be \(H, W\)"):
        decode_segmentation(np.zeros(21), 21, "classmap", "mine")


# ---------------------------------------------------------------------------------------------- COCO -> VOC
def test_coco_polygons_become_voc_masks_with_crowds_and_other_classes_ignored():
    cats = {18: "dog", 1: "person", 25: "giraffe"}
    anns = [{"category_id": 18, "iscrowd": 0, "area": 400.0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"category_id": 1, "iscrowd": 1, "area": 100.0, "segmentation": [[40, 0, 50, 0, 50, 10, 40, 10]]},
            {"category_id": 25, "iscrowd": 0, "area": 100.0, "segmentation": [[0, 40, 10, 40, 10, 50, 0, 50]]}]
    m = coco_voc_mask(anns, 60, 60, cats)
    assert (m[12:28, 12:28] == DOG).all()
    assert (m[2:8, 42:48] == IGNORE).all()  # the crowd region
    assert (m[42:48, 2:8] == IGNORE).all()  # a giraffe: no VOC class
    assert m[55, 55] == 0 and set(np.unique(m)) == {0, DOG, IGNORE}


def test_the_shared_coco_photos_have_voc_ground_truth():
    js = require_shared("data", "coco2017-train128", "instances.json")
    sources, _ = get_task("segmentation").sources([js])
    masks = [decode_mask(s.mask) for s in sources]
    voc = [((m != 0) & (m != IGNORE)).any() for m in masks]
    assert len(sources) == 128 and sum(voc) == 97  # MODELS.md: 97 of the 128 hold a VOC class
    d = json.loads(js.read_text())
    crowd_images = {a["image_id"] for a in d["annotations"] if a["iscrowd"]}
    names = {im["id"]: im["file_name"] for im in d["images"]}
    by_key = {s.key: m for s, m in zip(sources, masks, strict=True)}
    assert all((by_key[names[i]] == IGNORE).any() for i in crowd_images)


# ---------------------------------------------------------------------------------------------- the zoo
@pytest.mark.parametrize("name", SEGMENTERS)
def test_each_segmenter_finds_the_dog(name):
    photo = require_shared("data", "photos", "dog.jpg")
    from imutility.images import load_image

    seg = zoo.get_labeler(name)([load_image(photo)])[0]
    assert seg.mask.shape == tuple(zoo.get_spec(name).preprocess.size)
    assert (seg.mask == DOG).mean() > 0.03
    assert zoo.get_spec(name).classes[DOG] == "dog"


@pytest.mark.parametrize("name", SEGMENTERS)
def test_a_segmenter_file_is_hash_checked(name, tmp_path):
    spec = zoo.get_spec(name)
    src = require_shared("models", spec.weights.file)
    bad = tmp_path / Path(spec.weights.file).name
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(zoo.WeightsHashError):
        zoo.get_labeler(name, weights_path=bad)


# ---------------------------------------------------------------------------------------------- your own segmenter
class TinySegmenter(torch.nn.Module):
    def __init__(self, classes: int = 21):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _spec(folder: Path, onnx: Path, kind: str = "logits", resize: str = "stretch") -> Path:
    sha = hashlib.sha256(onnx.read_bytes()).hexdigest()
    p = folder / "seg.toml"
    p.write_text(f'name = "tiny-seg"\ntask = "segmentation"\nformat = "onnx"\nfile = "{onnx.name}"\nsha256 = "{sha}"\n'
                 f'[preprocess]\nsize = [32, 32]\nresize = "{resize}"\nscale = 0.00392156862745098\n'
                 f'[output]\nkind = "{kind}"\nclasses = "voc"\n')
    return p


def _export(model, path: Path) -> Path:
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"],
                      output_names=["out"], dynamic_axes={"input": {0: "b"}, "out": {0: "b"}}, opset_version=17,
                      dynamo=False)
    return path


@pytest.fixture(autouse=True)
def clean_registry():
    yield
    zoo._CUSTOM.clear()


def test_your_own_onnx_segmenter(tmp_path):
    spec = zoo.register(_spec(tmp_path, _export(TinySegmenter(), tmp_path / "seg.onnx")))
    assert spec.task == "segmentation" and spec.num_classes == 21
    out = zoo.get_labeler("tiny-seg")([natural_image(60, 40, seed=1), natural_image(50, 50, seed=2)])
    assert [o.mask.shape for o in out] == [(32, 32), (32, 32)] and all(0 < o.confidence <= 1 for o in out)


def test_a_spec_with_the_wrong_class_count_is_one_clear_error(tmp_path):
    zoo.register(_spec(tmp_path, _export(TinySegmenter(classes=5), tmp_path / "seg.onnx")))
    with pytest.raises(CustomSpecError, match="does not run as the spec declares.*21 classes"):
        zoo.get_labeler("tiny-seg")


def test_a_segmenter_with_its_own_classes_cannot_be_judged_against_voc_ground_truth(tmp_path):
    sha_file = _export(TinySegmenter(classes=3), tmp_path / "seg.onnx")
    (tmp_path / "names.txt").write_text("floor\nwall\nsky\n")
    spec = _spec(tmp_path, sha_file).read_text().replace('classes = "voc"', 'classes = "names.txt"')
    (tmp_path / "seg.toml").write_text(spec)
    lab = zoo.get_labeler(zoo.register(tmp_path / "seg.toml").name)
    assert lab.spec.num_classes == 3
    with pytest.raises(ValueError, match="own classes"):
        get_task("segmentation").check_labelers([lab], "ground-truth")
    get_task("segmentation").check_labelers([lab], "pristine")  # reference-free: fine


class PooledSegmenter(TinySegmenter):
    """Outputs (N, 21) class scores: a classifier's shape, not a map."""

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_a_spec_whose_output_is_not_a_map_is_one_clear_error(tmp_path):
    zoo.register(_spec(tmp_path, _export(PooledSegmenter(), tmp_path / "seg.onnx")))
    with pytest.raises(CustomSpecError, match=r"does not run as the spec declares.*\(C, H, W\)"):
        zoo.get_labeler("tiny-seg")


def test_a_segmenter_spec_must_resize_the_whole_photo(tmp_path):
    with pytest.raises(CustomSpecError, match="must be 'stretch'"):
        zoo.register(_spec(tmp_path, _export(TinySegmenter(), tmp_path / "seg.onnx"), resize="letterbox"))


# ---------------------------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def seg_labels(tmp_path_factory) -> Path:
    """8 shared photos (6 with VOC content, 2 Kodak scenes), reference-free, three JPEG levels."""
    folder = tmp_path_factory.mktemp("segphotos")
    for name in ("dog.jpg", "horses.jpg", "person.jpg", "kite.jpg", "grace_hopper.bmp", "parrot.jpg"):
        p = require_shared("data", "photos", name)
        shutil.copy(p, folder / name)
    for name in ("kodim03.png", "kodim08.png"):
        shutil.copy(require_shared("data", "kodak24", name), folder / name)
    out = tmp_path_factory.mktemp("seglabels") / "labels"
    assert main(["label", "--task", "segmentation", "--data", str(folder), "--reference", "pristine",
                 "--labelers", "deeplabv3_mnv2_voc,deeplabv3_257_voc", "--held-out", "deeplabv3_mnv2_dm05_voc",
                 "-d", "jpeg:q=5", "-d", "jpeg:q=30", "-d", "jpeg:q=90", str(out)]) == 0
    return out


def test_labelling_caches_masks_and_labels_every_photo(seg_labels):
    t = pd.read_parquet(seg_labels / "labels.parquet")
    assert len(t) == 8 * 3
    for n in ("deeplabv3_mnv2_voc", "deeplabv3_257_voc", "deeplabv3_mnv2_dm05_voc"):
        assert t[f"{n}.miou_ref"].eq(1.0).all()  # reference-free: the pristine mask is the reference
        assert t[f"{n}.utility"].between(0, 1).all()
    assert "deeplabv3_257_voc.p5" in t and "deeplabv3_mnv2_voc.p5" not in t  # confidence only from scores
    q5 = t[t["distortion"] == "jpeg:q=5"]["deeplabv3_mnv2_voc.utility"].mean()
    q90 = t[t["distortion"] == "jpeg:q=90"]["deeplabv3_mnv2_voc.utility"].mean()
    assert q5 < q90  # compression costs mask quality
    jrq = pd.read_parquet(seg_labels / "jrq.parquet")
    assert len(jrq) > 0


def test_a_photo_without_voc_content_is_labelled_not_a_crash(tmp_path):
    grey = tmp_path / "photos"
    grey.mkdir()
    natural_image(120, 90, seed=3).save(grey / "texture.png")
    out = tmp_path / "labels"
    assert main(["label", "--task", "segmentation", "--data", str(grey), "--reference", "pristine",
                 "--labelers", "deeplabv3_257_voc", "-d", "jpeg:q=90", str(out)]) == 0
    t = pd.read_parquet(out / "labels.parquet")
    assert len(t) == 1
    label, util = t["deeplabv3_257_voc.label"].iloc[0], t["deeplabv3_257_voc.utility"].iloc[0]
    assert 0.0 <= util <= 1.0  # a defined utility, whatever the network saw
    assert label == (1.0 if util >= 0.9 else 0.0) if (util >= 0.9 or util < 0.75) else np.isnan(label)


def test_ground_truth_needs_polygons(tmp_path, capsys):
    js = require_shared("data", "coco2017-val128", "instances.json")
    assert main(["label", "--task", "segmentation", "--data", str(js), "--labelers", "deeplabv3_257_voc",
                 "-d", "jpeg:q=90", "--limit", "2", str(tmp_path / "o")]) == EXIT_ERROR
    assert "no polygons" in capsys.readouterr().err


def test_train_predict_and_benchmark_a_segmentation_predictor(seg_labels, tmp_path):
    from imutility import Predictor

    model = tmp_path / "model"
    assert main(["train", str(seg_labels), str(model), "--architecture", "content", "--backbone",
                 "efficientnet_lite0", "--epochs", "2", "--mode", "continuous", "--target-column",
                 "retained_mean"]) == 0
    card = json.loads((model / "card.json").read_text())
    assert card["task"] == "segmentation"
    p = Predictor.load(model)
    scores = p([natural_image(80, 60, seed=i) for i in range(3)])
    assert np.isfinite(scores).all()
    t = pd.read_parquet(seg_labels / "labels.parquet")
    assert np.isfinite(get_task("segmentation").success(t, "deeplabv3_mnv2_dm05_voc")).any()


def test_measure_and_compress_against_a_segmenter(tmp_path, capsys):
    from imutility.distort import JPEG
    from imutility.images import load_image

    photo = require_shared("data", "photos", "dog.jpg")
    worse = tmp_path / "dog.jpg"
    worse.write_bytes(JPEG(5).encode(load_image(photo)))
    assert main(["measure", "--task", "segmentation", str(photo), str(worse), "--labelers", "deeplabv3_257_voc",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert 0 <= row["per_labeler"]["deeplabv3_257_voc"] < 1
    assert main(["measure", "--task", "segmentation", str(photo), str(photo), "--labelers",
                 "deeplabv3_257_voc", "--json"]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert same["per_labeler"]["deeplabv3_257_voc"] == 1.0
    out = tmp_path / "compressed"
    assert main(["compress", str(photo), str(out), "--target", "deeplabv3_257_voc"]) == 0
    assert any(out.iterdir())


def test_segmentation_rate_judge_uses_the_task_metric(seg_labels):
    from imutility.evaluation.rate_modes import make_judge

    t = pd.read_parquet(seg_labels / "labels.parquet")
    keys = list(dict.fromkeys(t["key"]))
    judge, ok = make_judge(seg_labels, keys, [5, 30, 90], "deeplabv3_mnv2_dm05_voc")
    assert ok.all()
    rows = np.arange(len(keys))
    low, high = (judge.metric(rows, np.full(len(keys), j)) for j in (0, 2))
    assert low < high <= judge.pristine(rows) == 1.0
    sub = judge.restrict(rows[2:5])  # what the benchmark's bootstrap works on: photos 2-4 as rows 0-2
    assert sub.metric(np.arange(3), np.full(3, 0)) == judge.metric(rows[2:5], np.full(3, 0))
    row = t[(t["key"] == keys[2]) & (t["distortion"] == "jpeg:q=5")]
    sources = {s.key: s for s in read_sources(seg_labels)}
    one = get_task("segmentation").selection_metric(row, "deeplabv3_mnv2_dm05_voc",
                                                    lambda n: read_outputs(seg_labels, n), sources)
    assert judge.metric(rows[2:3], np.zeros(1, dtype=int)) == pytest.approx(one)
    pristine_one = get_task("segmentation").selection_metric(row, "deeplabv3_mnv2_dm05_voc",
                                                             lambda n: read_outputs(seg_labels, n), sources,
                                                             pristine=True)
    assert pristine_one == 1.0 and PRISTINE == "pristine"


def test_the_shipped_segmentation_predictor_and_rate_model(tmp_path):
    """default-segmentation scores the dog photo useful and its q = 5 copy not; compress --for the shipped rate model's
    segmenter writes one JPEG per photo at a planned quality."""
    import io

    from PIL import Image

    from imutility import Predictor
    from imutility.distort import JPEG
    from imutility.images import load_image

    photo = require_shared("data", "photos", "dog.jpg")
    p = Predictor.load("default-segmentation")
    assert p.card.task == "segmentation"
    img = load_image(photo)
    bad = Image.open(io.BytesIO(JPEG(5).encode(img)))
    assert p(img) > 0.9 > 0.1 > p(bad)
    out = tmp_path / "out"
    assert main(["compress", str(photo), str(out), "--for", "deeplabv3_mnv2_voc"]) == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 1 and 10 <= int(manifest["quality"].iloc[0]) <= 95


def test_rate_accuracy_curves_use_miou(seg_labels, tmp_path):
    out = tmp_path / "curves"
    assert main(["curves", str(seg_labels), "-o", str(out), "--predictor", "seg=default-segmentation"]) == 0
    r = json.loads((out / "curves.json").read_text())
    assert r["task"] == "segmentation" and r["metric"] == "mIoU"
    held = r["networks"]["deeplabv3_mnv2_dm05_voc"]
    assert held["pristine"] == 1.0  # reference-free: its own pristine masks
    values = [metric for _bpp, metric in held["curves"]["fixed quality"]]  # by quality, lowest first
    assert values[0] < values[-1] <= 1.0  # q = 5 keeps less of the masks than q = 90
