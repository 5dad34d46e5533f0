"""Your own network as a labeler: a model file plus a small declared spec, registered without editing the package.

A spec is a TOML file beside (or pointing at) the model file; it declares the same data as the zoo's own
entries (:mod:`imutility.zoo.entries`): the file and its SHA-256, the preprocessing, what the output is::

    name = "nette-lite0"            # how --labelers refers to it; must not be a zoo name
    task = "classification"         # or "detection" or "segmentation"
    format = "onnx"                 # onnx | torchvision (a state dict + `arch`) | torchscript | tflite
    file = "nette_lite0.onnx"       # relative to this spec file
    sha256 = "6f1c..."              # the file's full SHA-256 (`sha256sum`); checked at every build
    description = "EfficientNet-Lite0 restricted to the 10 Imagenette classes"

    [preprocess]                    # imutility.zoo.Preprocess's fields, each with its default
    size = [224, 224]               # (height, width)
    resize = "center_crop"          # stretch | letterbox | center_crop
    resize_size = 256
    scale = 0.00392156862745098     # 1/255
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]

    [output]
    kind = "logits"                 # classification: logits | probs
    classes = "classes.txt"         # one name per line in output order; or "imagenet-1k" (the standard 1000)
    # detection instead: decoder = "xyxy_score_class" (one (N, 6) output: x1 y1 x2 y2 in network pixels,
    # score, class) or "yolox" | "nanodet" | "fastestdet"; classes = "coco80" (class i = the i-th COCO id)
    # or "coco-ids" (the official ids themselves)
    # segmentation instead: kind = "classmap" (an (H, W) class index per pixel) | "logits" | "probs" (class scores,
    # (C, H, W) or (H, W, C)); classes = "voc" (PASCAL VOC's 21, 0 = background) or a names file; the whole photo
    # is resized to the input (resize = "stretch"), so the output grid covers all of it

    [options]                       # optional: batch_size, arch, num_classes (torchvision), score_threshold, nms_iou

**Which formats run code.** An ONNX file and a torchvision state dict are data: loading them runs nothing of
the file's author. A TorchScript file is a program: its ``forward()`` runs whatever its author wrote, file
reads and writes included, in every process that labels with it (Ray actors too). The SHA-256 proves which
file it is, not that it is safe. So a TorchScript spec must say ``trust_code = true``; for a file of unknown
origin, ask for ONNX or a state dict instead.

A spec is also tried once when its labeler is built: one grey image through the network, whose output must be
what the spec declares (as many classes as the class list, a decodable detection output); a mismatch is one
error naming the spec, not a traceback in the middle of a labelling run.

A classifier with its own classes labels photos against its agreed pristine prediction
(``--reference pristine``); one over the ImageNet-1k classes can also use the ground truth. Detectors
report official COCO ids, like the zoo's.

:func:`load_spec` reads a file into a :class:`~imutility.zoo.LabelerSpec`; :func:`imutility.zoo.register`
adds it to the registry (``imutility --labeler-spec FILE ...`` on the command line, or
``$IMUTILITY_LABELER_SPECS``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

from imutility.errors import ImutilityError
from imutility.zoo.base import LabelerOptions, LabelerSpec
from imutility.zoo.preprocess import Preprocess
from imutility.zoo.weights import WeightsSpec

FORMATS = ("onnx", "torchvision", "torchscript", "tflite")
DETECTION_DECODERS = ("xyxy_score_class", "yolox", "nanodet", "fastestdet")
IMAGENET = "imagenet-1k"
DETECTION_CLASSES = ("coco80", "coco-ids")
SEGMENTATION_KINDS = ("classmap", "logits", "probs")
_TOP_KEYS = {"name", "task", "format", "file", "sha256", "description", "preprocess", "output", "options",
             "trust_code"}
#: formats whose files are programs (run their author's code when loaded or called)
CODE_FORMATS = ("torchscript",)
#: the largest input side a spec may declare (a typo such as 22400 would otherwise allocate gigabytes per image)
MAX_INPUT_SIDE = 4096
_OPTION_KEYS = {"batch_size", "arch", "num_classes", "score_threshold", "nms_iou", "max_detections"}


class CustomSpecError(ImutilityError, ValueError):
    """A labeler spec file that cannot be used; the message names the file and the field."""


def load_spec(path: str | os.PathLike) -> LabelerSpec:
    """The :class:`LabelerSpec` a TOML spec file declares (see the module doc); every field is checked here."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise CustomSpecError(f"{path}: cannot read ({e.strerror or e})") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CustomSpecError(f"{path}: not valid TOML ({e})") from e

    def need(table: dict, key: str, kind: type, where: str = ""):
        if key not in table:
            raise CustomSpecError(f"{path}: {where}{key} is missing")
        value = table[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise CustomSpecError(f"{path}: {where}{key} must be a {kind.__name__}, got {value!r}")
        return value

    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise CustomSpecError(f"{path}: unknown field(s) {', '.join(sorted(unknown))} "
                              f"(allowed: {', '.join(sorted(_TOP_KEYS))})")
    name, task, fmt = need(raw, "name", str), need(raw, "task", str), need(raw, "format", str)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise CustomSpecError(f"{path}: name must be letters, digits, '-', '_' or '.', got {name!r}")
    if task not in _OUTPUTS:
        raise CustomSpecError(f"{path}: task must be one of {', '.join(_OUTPUTS)}, got {task!r}")
    if fmt not in FORMATS:
        raise CustomSpecError(f"{path}: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    trust = raw.get("trust_code", False)
    if not isinstance(trust, bool):
        raise CustomSpecError(f"{path}: trust_code must be true or false, got {trust!r}")
    if fmt in CODE_FORMATS and not trust:
        raise CustomSpecError(f"{path}: a {fmt} file is a program that runs its author's code (file access "
                              "included) wherever it labels; set trust_code = true if you trust its origin, or "
                              "export the network to ONNX or a torchvision state dict")
    if "sha256" not in raw and isinstance(raw.get("file"), str) and (path.parent / raw["file"]).is_file():
        from imutility.zoo.weights import file_sha256

        raise CustomSpecError(f"{path}: sha256 is missing; the file's is (check it is the file you mean, then paste): "
                              f"sha256 = \"{file_sha256(path.parent / raw['file'])}\"")
    sha = need(raw, "sha256", str).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CustomSpecError(f"{path}: sha256 must be the file's full 64-hex-digit SHA-256, got {sha!r}")
    model_file = (path.parent / need(raw, "file", str)).resolve()

    pre_raw = dict(need(raw, "preprocess", dict))
    fields = {f.name for f in dataclasses.fields(Preprocess)}
    if set(pre_raw) - fields:
        raise CustomSpecError(f"{path}: unknown preprocess field(s) {', '.join(sorted(set(pre_raw) - fields))} "
                              f"(allowed: {', '.join(sorted(fields))})")
    for key in ("size", "mean", "std"):
        if key in pre_raw:
            pre_raw[key] = tuple(pre_raw[key])
    if pre_raw.get("resize") == "model":
        raise CustomSpecError(f"{path}: preprocess.resize = 'model' is for the zoo's torchvision detectors")
    try:
        pre = Preprocess(**pre_raw)
    except (TypeError, ValueError) as e:
        raise CustomSpecError(f"{path}: preprocess: {e}") from e
    _check_preprocess(path, pre)

    out = need(raw, "output", dict)
    allowed, read_output, _ = _OUTPUTS[task]
    if set(out) - allowed:
        raise CustomSpecError(f"{path}: unknown output field(s) {', '.join(sorted(set(out) - allowed))} "
                              f"(allowed for {task}: {', '.join(sorted(allowed))})")
    opts_raw = dict(raw.get("options", {}))
    if set(opts_raw) - _OPTION_KEYS:
        raise CustomSpecError(f"{path}: unknown option(s) {', '.join(sorted(set(opts_raw) - _OPTION_KEYS))} "
                              f"(allowed: {', '.join(sorted(_OPTION_KEYS))})")
    _check_options(path, opts_raw)
    if fmt == "torchvision" and not opts_raw.get("arch"):
        raise CustomSpecError(f"{path}: format 'torchvision' needs options.arch (e.g. 'resnet18')")
    options, classes, builder, backend = read_output(path, out, opts_raw, fmt, need, pre)
    weights = WeightsSpec(file=str(model_file), sha256=sha, source=f"custom labeler spec {path}",
                          license="(the user's)")
    try:
        return LabelerSpec(name=name, task=task, backend=backend,
                           weights=weights, preprocess=pre, builder=builder,
                           description=str(raw.get("description", f"custom {task} labeler from {path.name}")),
                           options=options, classes=classes, custom=True)
    except TypeError as e:
        raise CustomSpecError(f"{path}: {e}") from e


def _check_preprocess(path: Path, pre: Preprocess) -> None:
    if len(pre.size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE
                                     for v in pre.size):
        raise CustomSpecError(f"{path}: preprocess.size must be [height, width], each 1..{MAX_INPUT_SIDE}, "
                              f"got {list(pre.size)}")
    if pre.resize_size is not None and not (isinstance(pre.resize_size, int) and 0 < pre.resize_size
                                            <= MAX_INPUT_SIDE):
        raise CustomSpecError(f"{path}: preprocess.resize_size must be 1..{MAX_INPUT_SIDE}, got {pre.resize_size!r}")
    if len(pre.mean) != 3 or len(pre.std) != 3 or any(s == 0 for s in pre.std):
        raise CustomSpecError(f"{path}: preprocess.mean and .std must hold 3 numbers each, std non-zero")
    choices = {"resize": ("stretch", "letterbox", "center_crop"), "channels": ("RGB", "BGR"),
               "layout": ("NCHW", "NHWC"), "dtype": ("float32", "uint8"),
               "interpolation": ("bilinear", "bicubic", "area", "nearest")}
    for key, allowed in choices.items():
        if getattr(pre, key) not in allowed:
            raise CustomSpecError(f"{path}: preprocess.{key} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(pre, key)!r}")


def _check_options(path: Path, opts: dict) -> None:
    positive_ints = ("batch_size", "num_classes", "max_detections")
    for key, value in opts.items():
        ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0 if key in positive_ints else
              isinstance(value, str) and bool(value) if key == "arch" else
              isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1)
        if not ok:
            want = "a positive integer" if key in positive_ints else "a name" if key == "arch" else "a number in [0, 1]"
            raise CustomSpecError(f"{path}: options.{key} must be {want}, got {value!r}")


def probe(labeler) -> None:
    """Run a custom labeler once on a grey image and refuse (:class:`CustomSpecError`, one line naming the spec)
    a network whose output is not what its spec declares: another number of classes, an output the declared
    detection decoder cannot read, an input it refuses."""
    from PIL import Image

    try:
        labeler([Image.new("RGB", (96, 72), (128, 128, 128))])
    except Exception as e:  # noqa: BLE001 - whatever the user's file does wrong, it is the spec's one error
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CustomSpecError(f"{labeler.spec.weights.source}: the network does not run as the spec declares "
                              f"({type(e).__name__}: {first[:300]})") from e


def _classifier_output(path: Path, out: dict, opts_raw: dict, fmt: str, need, pre: Preprocess):
    """A classifier's ``[output]``: logits or probabilities over ImageNet-1k or its own class list."""
    from imutility.zoo.backends.custom_builders import CLASSIFIER_BUILDERS

    kwargs = {"num_classes": opts_raw.pop("num_classes")} if "num_classes" in opts_raw else {}
    kind = out.get("kind", "logits")
    if kind not in ("logits", "probs"):
        raise CustomSpecError(f"{path}: output.kind must be logits or probs, got {kind!r}")
    cls = need(out, "classes", str, "output.")
    classes = None if cls == IMAGENET else _read_classes(path, cls, IMAGENET)
    if fmt not in CLASSIFIER_BUILDERS:
        raise CustomSpecError(f"{path}: custom classifiers are {', '.join(CLASSIFIER_BUILDERS)} files, not {fmt!r}")
    return (LabelerOptions(output=kind, kwargs=kwargs, **opts_raw), classes, CLASSIFIER_BUILDERS[fmt],
            f"custom-{fmt}")


def _detector_output(path: Path, out: dict, opts_raw: dict, fmt: str, need, pre: Preprocess):
    """A detector's ``[output]``: a decoder (the generic (N, 6) or one of the zoo's) and its class ids."""
    from imutility.zoo.backends.custom_builders import DETECTOR_BUILDERS

    opts_raw.pop("num_classes", None)
    decoder = need(out, "decoder", str, "output.")
    if decoder not in DETECTION_DECODERS:
        raise CustomSpecError(f"{path}: output.decoder must be one of {', '.join(DETECTION_DECODERS)}, "
                              f"got {decoder!r}")
    space = out.get("classes", "coco80")
    if space not in DETECTION_CLASSES or (decoder != "xyxy_score_class" and space != "coco80"):
        raise CustomSpecError(f"{path}: output.classes must be one of {', '.join(DETECTION_CLASSES)} "
                              f"(the yolox/nanodet/fastestdet decoders are coco80), got {space!r}")
    if fmt != "onnx":
        raise CustomSpecError(f"{path}: custom detectors are ONNX files (format = 'onnx')")
    return (LabelerOptions(kwargs={"classes": space}, **opts_raw), None, DETECTOR_BUILDERS[decoder],
            f"custom-{fmt}-{decoder}")


def _segmenter_output(path: Path, out: dict, opts_raw: dict, fmt: str, need, pre: Preprocess):
    """A segmenter's ``[output]``: a class map or class scores over VOC's 21 classes or its own list."""
    from imutility.zoo.backends.segmenters import SEGMENTER_BUILDERS
    from imutility.zoo.base import VOC_CLASSES

    opts_raw.pop("num_classes", None)
    kind = need(out, "kind", str, "output.")
    if kind not in SEGMENTATION_KINDS:
        raise CustomSpecError(f"{path}: output.kind must be one of {', '.join(SEGMENTATION_KINDS)}, got {kind!r}")
    if pre.resize != "stretch":
        raise CustomSpecError(f"{path}: a segmenter's preprocess.resize must be 'stretch' (its output grid must cover "
                              f"the whole photo), got {pre.resize!r}")
    if fmt not in SEGMENTER_BUILDERS:
        raise CustomSpecError(f"{path}: custom segmenters are {', '.join(SEGMENTER_BUILDERS)} files, not {fmt!r}")
    cls = out.get("classes", "voc")
    classes = VOC_CLASSES if cls == "voc" else _read_classes(path, cls, "voc")
    return LabelerOptions(output=kind, **opts_raw), classes, SEGMENTER_BUILDERS[fmt], f"custom-{fmt}-segmenter"


def _read_classes(path: Path, cls: str, standard: str) -> tuple[str, ...]:
    names_file = path.parent / cls
    try:
        classes = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
    except OSError as e:
        raise CustomSpecError(f"{path}: output.classes: cannot read {names_file} "
                              f"({e.strerror or e}); or give {standard!r}") from e
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise CustomSpecError(f"{path}: {names_file} must list at least 2 distinct class names, one per line")
    return classes


def _segmenter_draft(session) -> list[str]:
    shape = session.get_outputs()[0].shape
    return ['kind = "logits"                   # CHECK: or classmap (an ArgMax in the graph) or probs',
            f'classes = "voc"                  # CHECK: or a names file (the output is {shape})']


def _classifier_draft(session) -> list[str]:
    n_out = session.get_outputs()[0].shape[-1]
    classes = "imagenet-1k" if n_out in (1000, 1001) else "classes.txt"
    return ['kind = "logits"                   # CHECK: or probs if the graph ends in a softmax',
            f'classes = "{classes}"' + ("" if classes == "imagenet-1k" else
                                        f"             # CHECK: write the {n_out} class names, one per line")]


def _detector_draft(session) -> list[str]:
    return ['decoder = "xyxy_score_class"      # CHECK: or yolox | nanodet | fastestdet', 'classes = "coco80"']


#: each task's ``[output]`` table: the fields it may hold, its reader (options, classes, builder, backend) and
#: what ``imutility zoo spec`` drafts of it from an ONNX session
_OUTPUTS = {"classification": ({"kind", "classes"}, _classifier_output, _classifier_draft),
            "detection": ({"decoder", "classes"}, _detector_output, _detector_draft),
            "segmentation": ({"kind", "classes"}, _segmenter_output, _segmenter_draft)}


def draft_spec(model_file: str | os.PathLike, task: str = "classification", name: str | None = None) -> str:
    """The TOML spec of an ONNX network as far as the file says it: its name (the file's stem), its SHA-256, the
    input size and layout read from the graph, ImageNet's mean and std (to check against how it was trained), and
    for a classifier the class list: ``imagenet-1k`` for 1000 outputs, else a ``classes.txt`` to write. What the
    file cannot say is marked ``# CHECK``. ``imutility zoo spec MODEL.onnx`` writes it beside the file."""
    from imutility.zoo.backends.ort import ort_session
    from imutility.zoo.weights import file_sha256

    path = Path(model_file)
    if path.suffix.lower() != ".onnx":
        raise CustomSpecError(f"{path}: zoo spec drafts ONNX files (for a state dict or TorchScript, start from "
                              "docs/custom.md's example)")
    if task not in _OUTPUTS:
        raise CustomSpecError(f"task must be one of {', '.join(_OUTPUTS)}, got {task!r}")
    try:
        session = ort_session(path)
    except Exception as e:  # noqa: BLE001 - not an ONNX graph ONNX Runtime can load: one line
        raise CustomSpecError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from e
    shape = list(session.get_inputs()[0].shape)
    dims = [d if isinstance(d, int) else None for d in shape]
    layout, size = "NCHW", (224, 224)
    if len(dims) == 4 and dims[1] == 3:
        size = (dims[2] or 224, dims[3] or 224)
    elif len(dims) == 4 and dims[3] == 3:
        layout, size = "NHWC", (dims[1] or 224, dims[2] or 224)
    fixed = len(dims) == 4 and all(d is not None for d in dims[1:])
    stem = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-") or "my-network"
    any_size = "" if fixed else "  # CHECK: the graph takes any size"
    lines = [f'name = "{stem}"', f'task = "{task}"', 'format = "onnx"', f'file = "{path.name}"',
             f'sha256 = "{file_sha256(path)}"', f'description = "{stem} (drafted by imutility zoo spec)"', "",
             "[preprocess]", f"size = [{size[0]}, {size[1]}]{any_size}",
             'resize = "stretch"                # CHECK: or center_crop (with resize_size) or letterbox',
             f'layout = "{layout}"',
             'channels = "RGB"                  # CHECK: BGR for Caffe/OpenCV-trained networks',
             "scale = 0.00392156862745098       # CHECK: 1/255; x = (pixel * scale - mean) / std",
             "mean = [0.485, 0.456, 0.406]      # CHECK: ImageNet's; use what the network was trained with",
             "std = [0.229, 0.224, 0.225]", "", "[output]"]
    lines += _OUTPUTS[task][2](session)
    return "\n".join(lines) + "\n"
