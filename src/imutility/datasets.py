"""Readers for labelled pristine data: ImageNet-style classification folders and COCO detection sets.

Both yield plain records (path + ground truth) and leave decoding to :func:`imutility.images.load_image`,
so a bad file is reported where it is read and never stops the listing.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from imutility.errors import InvalidInputError
from imutility.images import list_images

SYNSET_RE = re.compile(r"^(n\d{8})")


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in the standard (sorted) class-index order."""
    text = resources.files("imutility").joinpath("resources/imagenet_synsets.txt").read_text()
    return tuple(line.split()[0] for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def imagenet_synset_index() -> dict[str, int]:
    return {s: i for i, s in enumerate(imagenet_synsets())}


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """Human-readable class names, index-aligned with :func:`imagenet_synsets`."""
    text = resources.files("imutility").joinpath("resources/imagenet_synsets.txt").read_text()
    return tuple(line.split(maxsplit=1)[1].replace("_", " ") for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassificationSample:
    path: Path
    key: str  # path relative to the dataset root, POSIX separators: the sample's stable id
    target: int  # standard ImageNet-1k class index 0..999


@dataclass
class ClassificationDataset:
    """An ImageNet-style labelled folder.

    Labels come from, in this order of preference:

    1. ``labels_file``: CSV/TSV/whitespace lines ``file_name class`` where class is an index
       0..999 or a synset id (a header line is skipped);
    2. class sub-folders named by synset id (``n01440764/...``) or by class index (``0/...``);
    3. a synset id at the start of each file name (``n01440764_tench.JPEG``).

    Files without a label are listed in :attr:`unlabelled` rather than dropped silently.
    """

    root: Path
    samples: list[ClassificationSample]
    unlabelled: list[Path] = field(default_factory=list)
    source: str = ""

    @classmethod
    def from_folder(cls, root: str | os.PathLike, labels_file: str | os.PathLike | None = None
                    ) -> ClassificationDataset:
        root = Path(root)
        files = list_images(root)
        index = imagenet_synset_index()
        if labels_file is not None:
            table = read_label_table(Path(labels_file), index)
            how, lookup = f"labels file {labels_file}", lambda p: table.get(p.name, table.get(_rel(p, root)))
        elif _has_class_subfolders(files, root):
            how, lookup = "class sub-folders", lambda p: _class_from_token(p.relative_to(root).parts[0], index)
        else:
            how = "synset ids in file names"

            def lookup(p: Path) -> int | None:
                m = SYNSET_RE.match(p.name)
                return index.get(m.group(1)) if m else None

        samples, unlabelled = [], []
        for p in files:
            t = lookup(p)
            if t is None:
                unlabelled.append(p)
            else:
                samples.append(ClassificationSample(p, _rel(p, root), int(t)))
        if not samples:
            raise InvalidInputError(f"no labelled images found in {root} (looked for {how}); "
                             f"{len(unlabelled)} image files had no label")
        return cls(root=root, samples=samples, unlabelled=unlabelled, source=how)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[ClassificationSample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> ClassificationSample:
        return self.samples[i]

    @property
    def targets(self) -> np.ndarray:
        return np.array([s.target for s in self.samples], dtype=np.int64)


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


def _has_class_subfolders(files: list[Path], root: Path) -> bool:
    index = imagenet_synset_index()
    tops = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    return bool(tops) and all(_class_from_token(t, index) is not None for t in tops)


def _class_from_token(token: str, index: dict[str, int]) -> int | None:
    if token in index:
        return index[token]
    if token.isdigit() and 0 <= int(token) < len(index):
        return int(token)
    return None


def _label_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, non-empty cells)`` of a CSV/TSV/whitespace labels file (the delimiter sniffed once)."""
    if not path.exists():
        raise FileNotFoundError(f"labels file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        sample = f.read(4096)
        f.seek(0)
        delim = "," if "," in sample else ("\t" if "\t" in sample else None)
        rows = csv.reader(f, delimiter=delim) if delim else (line.split() for line in f)
        for n, row in enumerate(rows, 1):
            row = [c.strip() for c in row if c.strip()]
            if row:
                yield n, row


def read_label_table(path: Path, index: dict[str, int]) -> dict[str, int]:
    """``file_name -> class index`` from CSV/TSV/whitespace lines; classes as indices or synset ids."""
    table: dict[str, int] = {}
    for n, row in _label_rows(path):
        if len(row) < 2:
            raise InvalidInputError(f"{path}:{n}: expected 'file_name class', got {row!r}")
        cls = _class_from_token(row[1], index)
        if cls is None:
            if n == 1:
                continue  # header
            raise InvalidInputError(f"{path}:{n}: {row[1]!r} is neither a class index 0..999 nor a synset id")
        table[row[0]] = cls
    return table


def read_file_list(path: Path) -> set[str]:
    """The file names (or relative paths) in the first column of a labels file, whatever its classes say."""
    return {row[0] for _, row in _label_rows(path)}


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionSample:
    path: Path
    key: str  # file name as in the json: the sample's stable id
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # (G, 4) xyxy pixels, crowd regions excluded
    labels: np.ndarray  # (G,) official COCO category ids
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # ignored when matching


@dataclass
class CocoDetectionDataset:
    """A COCO-format detection set read with pycocotools; category ids stay the official ones.

    ``images_dir`` defaults to an ``images/`` folder beside the json. Images listed in the json but
    missing on disk are kept in :attr:`missing`, image files on disk that the json does not mention
    in :attr:`unannotated`; both are reported by the CLI, neither is read.
    """

    annotation_file: Path
    images_dir: Path
    samples: list[DetectionSample]
    categories: dict[int, str]
    missing: list[Path] = field(default_factory=list)
    unannotated: list[Path] = field(default_factory=list)

    @classmethod
    def from_json(cls, annotation_file: str | os.PathLike, images_dir: str | os.PathLike | None = None
                  ) -> CocoDetectionDataset:
        ann = Path(annotation_file)
        img_dir = Path(images_dir) if images_dir is not None else ann.parent / "images"
        coco = read_coco(ann)
        cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        samples, missing = [], []
        for img_id in sorted(coco.getImgIds()):
            info = coco.loadImgs(img_id)[0]
            path = img_dir / info["file_name"]
            if not path.exists():
                missing.append(path)
                continue
            boxes, labels, crowd = coco_ground_truth(coco, img_id)
            samples.append(DetectionSample(path=path, key=info["file_name"], image_id=img_id, width=info["width"],
                                           height=info["height"], boxes=boxes, labels=labels, crowd_boxes=crowd))
        listed = {s.path.resolve() for s in samples} | {p.resolve() for p in missing}
        unannotated = [p for p in list_images(img_dir) if p.resolve() not in listed] if img_dir.is_dir() else []
        return cls(annotation_file=ann, images_dir=img_dir, samples=samples, categories=cats, missing=missing,
                   unannotated=unannotated)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[DetectionSample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> DetectionSample:
        return self.samples[i]


def read_coco(annotation_file: str | os.PathLike):
    """A pycocotools COCO object, without its console chatter."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    ann = Path(annotation_file)
    if not ann.exists():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann))


def coco_ground_truth(coco, img_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes xyxy, official category ids, crowd boxes) of one image; degenerate boxes dropped."""
    boxes, labels, crowd = [], [], []
    for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
        x, y, w, h = a["bbox"]
        if w <= 0 or h <= 0:
            continue
        if a.get("iscrowd", 0):
            crowd.append([x, y, x + w, y + h])
        else:
            boxes.append([x, y, x + w, y + h])
            labels.append(a["category_id"])
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
            np.asarray(crowd, dtype=np.float64).reshape(-1, 4))
