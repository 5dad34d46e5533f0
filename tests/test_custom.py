"""Users' own networks as labelers: spec files checked field by field, ONNX / torchvision state-dict /
TorchScript classifiers with their own classes, ONNX detectors through the zoo's decoders or a generic
(N, 6) output, the hash check, labelling and measuring against the pristine prediction, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import natural_image, require_shared
from imutility import zoo
from imutility.cli import EXIT_ERROR, main
from imutility.distort import JPEG
from imutility.images import list_images, load_image
from imutility.measure import measure_pairs
from imutility.zoo.custom import CustomSpecError, load_spec

PRE = """
[preprocess]
size = [32, 32]
resize = "stretch"
scale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
"""


class Tiny(torch.nn.Module):
    """A small real network with 3 outputs (random weights, seeded)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_spec(folder: Path, name: str, fmt: str, file: str, extra: str = "", output: str | None = None) -> Path:
    output = output if output is not None else '[output]\nkind = "logits"\nclasses = "classes.txt"\n'
    (folder / "classes.txt").write_text("cat\ndog\nbird\n")
    spec = folder / f"{name}.toml"
    spec.write_text(f'name = "{name}"\ntask = "classification"\nformat = "{fmt}"\nfile = "{file}"\n'
                    f'sha256 = "{sha(folder / file)}"\n{extra}\n{PRE}\n{output}')
    return spec


@pytest.fixture
def tiny_onnx(tmp_path) -> tuple[Path, Tiny]:
    model = Tiny().eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "tiny.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return write_spec(tmp_path, "tiny-onnx", "onnx", "tiny.onnx"), model


def reference_probs(model: torch.nn.Module, images) -> np.ndarray:
    from PIL import Image

    x = np.stack([np.asarray(im.resize((32, 32), Image.Resampling.BILINEAR)) for im in images]).astype(np.float32)
    x /= 255
    x = torch.from_numpy(((x - 0.5) / 0.25).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return model(x).softmax(1).numpy()


@pytest.fixture(autouse=True)
def clean_registry():
    yield
    zoo._CUSTOM.clear()


def test_onnx_classifier_with_its_own_classes(tiny_onnx):
    spec_path, model = tiny_onnx
    spec = zoo.register(spec_path)
    assert spec.classes == ("cat", "dog", "bird") and spec.num_classes == 3 and "tiny-onnx" in zoo.list_labelers()
    lab = zoo.get_labeler("tiny-onnx")
    images = [natural_image(50 + 7 * i, 40, seed=i) for i in range(5)]
    probs = lab(images)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, reference_probs(model, images), atol=1e-5)
    assert zoo.describe("tiny-onnx")["classes"] == ["cat", "dog", "bird"]


def test_torchvision_state_dict_and_torchscript_formats(tmp_path):
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=3).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    spec = zoo.register(write_spec(tmp_path, "my-r18", "torchvision", "r18.pt",
                                   output='[options]\narch = "resnet18"\nnum_classes = 3\n\n[output]\n'
                                          'kind = "logits"\nclasses = "classes.txt"\n'))
    images = [natural_image(64, 48, seed=i) for i in range(3)]
    np.testing.assert_allclose(zoo.get_labeler(spec.name)(images), reference_probs(net, images), atol=1e-5)

    scripted = torch.jit.script(Tiny().eval())
    scripted.save(str(tmp_path / "tiny.ts"))
    with pytest.raises(CustomSpecError, match="runs its author's code.*trust_code = true"):
        zoo.register(write_spec(tmp_path, "my-ts", "torchscript", "tiny.ts"))  # a program: not without consent
    spec = zoo.register(write_spec(tmp_path, "my-ts", "torchscript", "tiny.ts", extra="trust_code = true"))
    np.testing.assert_allclose(zoo.get_labeler(spec.name)(images), reference_probs(Tiny().eval(), images), atol=1e-5)


def test_a_network_that_does_not_match_its_spec_is_one_error(tiny_onnx, capsys):
    """The class list says 4 classes, the network gives 3: refused when the labeler is built, in one line, before
    any labelling; so is a declared input size no network should get."""
    spec_path, _ = tiny_onnx
    (spec_path.parent / "classes.txt").write_text("cat\ndog\nbird\nfish\n")
    spec_path.write_text(spec_path.read_text())
    zoo.register(spec_path)
    with pytest.raises(CustomSpecError, match="does not run as the spec declares.*3 classes, expected 4"):
        zoo.get_labeler("tiny-onnx")
    assert main(["--labeler-spec", str(spec_path), "zoo", "eval", "tiny-onnx", "--data", str(spec_path.parent)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not run as the spec declares" in err[0]


def test_a_changed_file_fails_the_hash_check(tiny_onnx):
    spec_path, _ = tiny_onnx
    zoo.register(spec_path)
    onnx_file = spec_path.parent / "tiny.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(zoo.WeightsHashError, match="does not match"):
        zoo.get_labeler("tiny-onnx")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('format = "onnx"', 'format = "keras"'), "format must be one of"),
    (lambda s: s.replace('task = "classification"', 'task = "depth"'), "task must be"),
    (lambda s: s.replace('name = "tiny-onnx"', 'name = "efficientnet_lite0"'), "zoo labeler's name"),
    (lambda s: s.replace('name = "tiny-onnx"', 'name = "../evil"'), "name must be"),
    (lambda s: "\n".join(line for line in s.splitlines() if not line.startswith("sha256")), "sha256 is missing"),
    (lambda s: s.replace("sha256 = \"", "sha256 = \"ab"), "full 64-hex-digit"),
    (lambda s: s + "\ncolour = 1\n", "unknown output field"),  # appended inside [output]
    (lambda s: s.replace('resize = "stretch"', 'resize = "squash"'), "preprocess.resize must be"),
    (lambda s: s.replace("size = [32, 32]", "size = [32]"), "preprocess.size"),
    (lambda s: s.replace("size = [32, 32]", "size = [100000, 100000]"), "preprocess.size"),
    (lambda s: s.replace('format = "onnx"', 'format = "onnx"\ntrust_code = "yes"'), "trust_code must be"),
    (lambda s: s.replace('classes = "classes.txt"', 'classes = "missing.txt"'), "cannot read"),
    (lambda s: s.replace('kind = "logits"', 'kind = "scores"'), "output.kind"),
    (lambda s: s.replace("[preprocess]", "[preprocess]\nshape = 3"), "unknown preprocess field"),
    (lambda s: s + "\n[options]\nbatch_size = 0\n", "options.batch_size must be"),
    (lambda s: s.replace('name = "tiny-onnx"', 'name = "tiny-onnx"\nname2 = 1'), "unknown field"),
    (lambda s: "name = [", "not valid TOML"),
])
def test_bad_spec_files_say_what_and_where(tiny_onnx, edit, message):
    spec_path, _ = tiny_onnx
    text = edit(spec_path.read_text())
    spec_path.write_text(text)
    with pytest.raises(CustomSpecError, match=message) as err:
        if "efficientnet_lite0" in text:
            zoo.register(spec_path)
        else:
            load_spec(spec_path)
    assert str(spec_path) in str(err.value) or "zoo labeler" in str(err.value)


def test_a_second_spec_under_a_registered_name_is_refused(tiny_onnx, tmp_path):
    spec_path, _ = tiny_onnx
    zoo.register(spec_path)
    zoo.register(spec_path)  # the same spec again: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "tiny.onnx").write_bytes((spec_path.parent / "tiny.onnx").read_bytes())
    with pytest.raises(CustomSpecError, match="already registered"):
        zoo.register(write_spec(other, "tiny-onnx", "onnx", "tiny.onnx"))


def test_cli_refuses_a_bad_spec_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    assert main(["--labeler-spec", str(bad), "zoo", "list"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task is missing" in err[0]


def test_label_and_measure_with_an_own_classes_labeler(tiny_onnx, tmp_path, capsys):
    spec_path, _ = tiny_onnx
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        natural_image(80, 60, seed=i).save(photos / f"p{i}.png")
    out = tmp_path / "labels"
    args = ["--labeler-spec", str(spec_path), "label", str(out), "--task", "classification", "--data", str(photos),
            "--labelers", "tiny-onnx", "-d", "jpeg:q=5", "-d", "jpeg:q=50", "--no-progress"]
    assert main([*args, "--reference", "pristine"]) == 0
    table = pd.read_parquet(out / "labels.parquet")
    assert len(table) == 8 and "tiny-onnx.label" in table and table["target"].dropna().between(0, 2).all()
    config = json.loads((out / "config.json").read_text())
    assert config["custom_labelers"] == {"tiny-onnx": sha(spec_path.parent / "tiny.onnx")}
    capsys.readouterr()
    # ImageNet ground truth cannot judge a 3-class network; mixing class lists cannot give an agreed class
    labelled = require_shared("data", "imagenet-sample")
    assert main(["--labeler-spec", str(spec_path), "label", str(tmp_path / "l2"), "--task", "classification",
                 "--data", str(labelled), "--limit", "2", "--labelers", "tiny-onnx", "-d", "jpeg:q=5"]) == EXIT_ERROR
    assert "own classes" in capsys.readouterr().err
    assert main(["--labeler-spec", str(spec_path), "label", str(tmp_path / "l3"), "--task", "classification",
                 "--data", str(photos), "--labelers", "tiny-onnx,squeezenet1_1", "--reference", "pristine",
                 "-d", "jpeg:q=5"]) == EXIT_ERROR
    assert "different class lists" in capsys.readouterr().err

    zoo.register(spec_path)
    lab = zoo.get_labeler("tiny-onnx")
    pristine = [load_image(p) for p in sorted(photos.iterdir())]
    distorted = [JPEG(5)(im).image for im in pristine]
    res = measure_pairs(pristine, distorted, [lab])
    assert len(res) == 4 and all(np.isfinite(r.per_labeler["tiny-onnx"]) for r in res)
    with pytest.raises(ValueError, match="own classes"):
        measure_pairs(pristine, distorted, [lab], targets=[0, 1, 2, 0])


def test_the_documented_nette_classifier_answers_in_its_own_classes(tmp_path):
    """The example of docs/custom.md: EfficientNet-Lite0 restricted to Imagenette's 10 classes, registered from
    the spec its script writes, names the right class of real Imagenette photos."""
    import importlib.util

    root = require_shared("data", "imagenette-val")
    script = Path(__file__).resolve().parents[1] / "examples" / "custom_labeler" / "make_nette_classifier.py"
    module_spec = importlib.util.spec_from_file_location("make_nette", script)
    make = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(make)
    assert make.main([str(tmp_path), "efficientnet_lite0"]) == 0
    spec = zoo.register(tmp_path / "nette-lite0.toml")
    assert spec.classes == tuple(name for _, name in make.NETTE)
    lab = zoo.get_labeler("nette-lite0")
    files, truth = [], []
    for k, (wnid, _) in enumerate(make.NETTE):
        picked = list_images(root / wnid)[:3]
        files += picked
        truth += [k] * len(picked)
    pred = lab([load_image(f) for f in files]).argmax(1)
    assert len(files) == 30 and (pred == np.asarray(truth)).mean() >= 0.8


def test_custom_detectors_through_a_zoo_decoder_and_the_generic_output(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    yolox_file = require_shared("models", "detection", "yolox_nano.onnx")
    (tmp_path / "det.toml").write_text(
        f'name = "my-yolox"\ntask = "detection"\nformat = "onnx"\nfile = "{yolox_file}"\nsha256 = "{sha(yolox_file)}"\n'
        '[preprocess]\nsize = [416, 416]\nresize = "letterbox"\nchannels = "BGR"\npad_value = 114\n'
        '[output]\ndecoder = "yolox"\n')
    zoo.register(tmp_path / "det.toml")
    photo = load_image(require_shared("data", "photos", "dog.jpg"))
    mine, theirs = zoo.get_labeler("my-yolox")([photo])[0], zoo.get_labeler("yolox_nano")([photo])[0]
    assert len(mine) > 0
    np.testing.assert_allclose(mine.boxes, theirs.boxes)
    np.testing.assert_array_equal(mine.labels, theirs.labels)

    # an end-to-end graph whose one output is (1, N, 6) rows in network pixels (here constant: 2 boxes)
    rows = np.array([[[10, 20, 110, 220, 0.9, 16], [0, 0, 50, 50, 0.8, 999]]], dtype=np.float32)  # id 16 = bird
    graph = helper.make_graph(
        [helper.make_node("Shape", ["input"], ["shape"]), helper.make_node("Constant", [], ["rows"],
                                                                           value=helper.make_tensor(
                                                                               "v", TensorProto.FLOAT, rows.shape,
                                                                               rows.ravel().tolist()))],
        "const", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 256, 256])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, list(rows.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "const.onnx")
    (tmp_path / "const.toml").write_text(
        f'name = "my-e2e"\ntask = "detection"\nformat = "onnx"\nfile = "const.onnx"\n'
        f'sha256 = "{sha(tmp_path / "const.onnx")}"\n'
        '[preprocess]\nsize = [256, 256]\nresize = "stretch"\nscale = 0.00392156862745098\n'
        '[output]\ndecoder = "xyxy_score_class"\nclasses = "coco-ids"\n')
    zoo.register(tmp_path / "const.toml")
    det = zoo.get_labeler("my-e2e")([natural_image(512, 128)])[0]  # x scaled by 2, y by 0.5 back to the image
    assert det.labels.tolist() == [16]  # 999 is no COCO id: dropped
    np.testing.assert_allclose(det.boxes[0], [20, 10, 220, 110])
    assert det.scores[0] == pytest.approx(0.9)
