"""Data readers: ImageNet-style folders in all three layouts, COCO jsons through pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import natural_image, require_shared
from imutility.datasets import (
    ClassificationDataset,
    CocoDetectionDataset,
    imagenet_class_names,
    imagenet_synsets,
)


def test_synset_table_is_the_standard_order():
    syn = imagenet_synsets()
    assert len(syn) == 1000 == len(set(syn))
    assert list(syn) == sorted(syn)
    assert syn[0] == "n01440764" and imagenet_class_names()[0] == "tench"
    assert syn[999] == "n15075141"  # toilet tissue, the last class


def test_synsets_match_torchvision_categories():
    from torchvision.models import ResNet18_Weights

    cats = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    ours = imagenet_class_names()
    assert (cats[0], cats[1], cats[999]) == ("tench", "goldfish", "toilet tissue")
    assert (ours[0], ours[1], ours[999]) == ("tench", "goldfish", "toilet tissue")


def test_imagenet_sample_from_file_names():
    root = require_shared("data", "imagenet-sample")
    ds = ClassificationDataset.from_folder(root)
    assert len(ds) == 1000 and not ds.unlabelled
    assert sorted(ds.targets.tolist()) == list(range(1000))
    tench = next(s for s in ds if s.key.startswith("n01440764"))
    assert tench.target == 0
    assert ds.source == "synset ids in file names"


def test_class_subfolders_by_synset_and_index(tmp_path):
    for folder in ("n01443537", "n15075141"):
        (tmp_path / "a" / folder).mkdir(parents=True)
        natural_image().save(tmp_path / "a" / folder / "x.jpg")
    ds = ClassificationDataset.from_folder(tmp_path / "a")
    assert sorted(ds.targets.tolist()) == [1, 999]
    for folder in ("3", "17"):
        (tmp_path / "b" / folder).mkdir(parents=True)
        natural_image().save(tmp_path / "b" / folder / "y.png")
    assert sorted(ClassificationDataset.from_folder(tmp_path / "b").targets.tolist()) == [3, 17]


def test_labels_file_with_header_indices_and_synsets(tmp_path):
    for name in ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "extra.JPEG"):
        natural_image().save(tmp_path / name, "JPEG")
    gt = tmp_path / "gt.csv"
    gt.write_text("file,label\nILSVRC2012_val_00000001.JPEG,65\nILSVRC2012_val_00000002.JPEG,n15075141\n")
    ds = ClassificationDataset.from_folder(tmp_path, labels_file=gt)
    assert {s.key: s.target for s in ds} == {"ILSVRC2012_val_00000001.JPEG": 65,
                                             "ILSVRC2012_val_00000002.JPEG": 999}
    assert [p.name for p in ds.unlabelled] == ["extra.JPEG"]
    gt.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG banana\n")
    with pytest.raises(ValueError, match="banana"):
        ClassificationDataset.from_folder(tmp_path, labels_file=gt)


def test_a_labels_file_chooses_the_photos_with_either_reference(tmp_path):
    """Ground truth or the pristine reference: only the listed files become sources (in a sub-folder too), the
    rest is one 'left out' line; a list that names none of the folder's files is an error."""
    from imutility.tasks import get_task

    (tmp_path / "n01440764").mkdir()
    for name in ("a.JPEG", "b.JPEG", "c.JPEG"):
        natural_image().save(tmp_path / "n01440764" / name, "JPEG")
    natural_image().save(tmp_path / "d.JPEG", "JPEG")
    gt = tmp_path / "list.txt"
    gt.write_text("a.JPEG n01440764\nn01440764/c.JPEG 0\n")
    task = get_task("classification")
    for reference in ("ground-truth", "pristine"):
        logs: list[str] = []
        sources, _ = task.sources([tmp_path], gt, reference=reference, log=logs.append)
        assert sorted(s.key for s in sources) == ["n01440764/a.JPEG", "n01440764/c.JPEG"], reference
        assert logs == [f"left out 2 images of {tmp_path} not listed in {gt}"], (reference, logs)
    gt.write_text("zzz.JPEG 3\n")
    with pytest.raises(ValueError, match="none of the 1 files"):
        task.sources([tmp_path], gt, reference="pristine")


def test_unlabelled_folder_is_a_clear_error(tmp_path):
    natural_image().save(tmp_path / "holiday.jpg")
    with pytest.raises(ValueError, match="no labelled images"):
        ClassificationDataset.from_folder(tmp_path)


def _coco_json(tmp_path, with_missing=True):
    (tmp_path / "images").mkdir()
    natural_image(100, 80).save(tmp_path / "images" / "1.jpg")
    images = [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 80}]
    if with_missing:
        images.append({"id": 2, "file_name": "2.jpg", "width": 10, "height": 10})
    anns = [
        {"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 90, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]
    p = tmp_path / "instances.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return p


def test_coco_reader_on_synthetic_json(tmp_path):
    ds = CocoDetectionDataset.from_json(_coco_json(tmp_path))
    assert len(ds) == 1 and [p.name for p in ds.missing] == ["2.jpg"]
    s = ds[0]
    np.testing.assert_array_equal(s.boxes, [[10, 20, 40, 60]])  # xywh -> xyxy
    np.testing.assert_array_equal(s.labels, [18])  # official id kept, crowd and degenerate boxes dropped
    assert s.crowd_boxes.shape == (1, 4)
    assert ds.categories[18] == "dog"


def test_coco_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError):
        CocoDetectionDataset.from_json(tmp_path / "nope.json")


@pytest.mark.parametrize(("name", "n_boxes"), [("coco2017-val128", 898), ("coco2017-train128", 929)])
def test_shared_coco_sets(name, n_boxes):
    root = require_shared("data", name)
    ds = CocoDetectionDataset.from_json(root / "instances.json")
    assert not ds.missing
    assert sum(len(s.labels) for s in ds) == n_boxes
    ids = {int(c) for s in ds for c in s.labels}
    assert ids <= set(ds.categories) and max(ids) <= 90
    for s in ds:
        assert s.path.exists()
        if len(s.boxes):
            assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 2] <= s.width + 1).all()
