"""The first hour of a new user (issue 24): each trip a newcomer reported, as a test that fails on the code they
tripped over. The README's two set-up commands are run as written by CI (.ci/run); the lean export is in
test_lean.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import natural_image, photo_folder, require_shared
from imutility.cli import EXIT_ERROR, EXIT_USAGE, main


# 2. what the score means, wherever it is shown
def test_predict_says_what_the_score_means(tmp_path, capsys):
    photo = tmp_path / "p.jpg"
    natural_image().save(photo, quality=90)
    assert main(["predict", str(photo)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[0])["path"] == str(photo)
    meaning = [line for line in captured.err.splitlines() if line.startswith("# ")]
    assert meaning and "useful" in meaning[0] and "efficientnet_lite0" in meaning[0]
    assert main(["predict", "--help"]) == 0
    assert "useful" in capsys.readouterr().out


# 3. compress ends with a summary and a figure
def test_compress_prints_a_summary_and_names_its_figure(tmp_path, capsys):
    src = photo_folder(tmp_path / "src", 3, 96, 80)
    out = tmp_path / "out"
    assert main(["compress", str(src), str(out), "--min-utility", "0.5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "KiB in" in text and "smaller" in text and "qualities" in text
    figure = out / "qualities.png"
    assert f"figure: {figure}" in text
    with Image.open(figure) as im:
        assert im.size[0] > 100 and im.size[1] > 50


# 5. discovery
def test_models_command_and_list_functions(capsys):
    import imutility

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    names = [i.name for i in imutility.list_predictors()]
    assert "default-classification" in names and all(n in text for n in names)
    assert "efficientnet_lite0" in imutility.list_labelers()
    public = dir(imutility)
    for name in ("Predictor", "list_predictors", "list_labelers", "utility", "compress", "load_image"):
        assert name in public


# 6. the Python API takes what users have
def test_predictor_takes_paths_pil_and_arrays_and_returns_a_float_for_one(tmp_path):
    from imutility import Predictor

    p = Predictor.load("default")
    im = natural_image()
    path = tmp_path / "p.png"
    im.save(path)
    by_path, by_str, by_pil, by_array = p(path), p(str(path)), p(im), p(np.asarray(im))
    assert isinstance(by_path, float) and isinstance(by_pil, float)
    assert by_path == pytest.approx(by_str) == pytest.approx(by_pil, abs=1e-6) == pytest.approx(by_array, abs=1e-6)
    many = p([path, im])
    assert isinstance(many, np.ndarray) and many.shape == (2,)
    assert many[0] == pytest.approx(by_path, abs=1e-6)


def test_full_reference_utility_in_one_call():
    import imutility
    from imutility.distort import JPEG

    photo = require_shared("data", "imagenet-sample", "n01443537_goldfish.JPEG")
    pristine = Image.open(photo).convert("RGB")
    same = imutility.utility(pristine, pristine, network="squeezenet1_1")
    assert same == pytest.approx(1.0)  # normalised: 1 at no loss
    wrecked = imutility.utility(JPEG(1)(pristine).image, photo, network="squeezenet1_1")
    assert wrecked < 0.9
    both = imutility.utility([pristine, pristine], [pristine, pristine], network="squeezenet1_1")
    assert isinstance(both, list) and len(both) == 2


def test_measure_prints_the_normalised_utility_by_default(tmp_path, capsys):
    photo = tmp_path / "goldfish.png"
    Image.open(require_shared("data", "imagenet-sample", "n01443537_goldfish.JPEG")).convert("RGB").save(photo)
    assert main(["measure", str(photo), str(photo), "--task", "classification", "--labelers", "squeezenet1_1"]) == 0
    out = capsys.readouterr().out
    assert "normalised" in out
    value = float(next(line for line in out.splitlines() if line.startswith(photo.name)).split()[-1])
    assert value == pytest.approx(1.0)
    assert main(["measure", str(photo), str(photo), "--task", "classification", "--labelers", "squeezenet1_1",
                 "--paper-form"]) == 0
    out = capsys.readouterr().out
    paper = float(next(line for line in out.splitlines() if line.startswith(photo.name)).split()[-1])
    assert paper < 1.0  # Eq. 2 as printed is below 1 at no loss


# 7. too little data is said loudly
def test_too_few_test_photos_give_loud_warnings():
    from imutility.predictor.training.split import sample_warnings

    few = sample_warnings(6, {"n_useful": 3, "n_non_useful": 3, "balanced_accuracy": 0.5})
    assert len(few) == 4 and any("6 test photos" in w for w in few) and any("chance" in w for w in few)
    assert sample_warnings(300, {"n_useful": 150, "n_non_useful": 150, "balanced_accuracy": 0.8}) == []


# 8. bring your own network
def test_zoo_spec_drafts_a_spec_that_loads(tmp_path, capsys):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
            self.fc = torch.nn.Linear(4, 1000)

        def forward(self, x):
            return self.fc(self.conv(x).relu().mean((2, 3)))

    model = tmp_path / "mine.onnx"
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, 3, 64, 48),), str(model), input_names=["x"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    assert main(["zoo", "spec", str(model)]) == 0
    spec = tmp_path / "mine.toml"
    assert f"wrote {spec}" in capsys.readouterr().out
    text = spec.read_text()
    assert hashlib.sha256(model.read_bytes()).hexdigest() in text and "size = [64, 48]" in text
    assert 'classes = "imagenet-1k"' in text
    from imutility.zoo.custom import load_spec

    assert load_spec(spec).name == "mine"
    assert main(["zoo", "spec", str(model)]) != 0  # never replaces
    assert "exists" in capsys.readouterr().err
    # a spec without its sha256 prints the one to paste
    spec.write_text("\n".join(line for line in text.splitlines() if not line.startswith("sha256")))
    assert main(["zoo", "info", "mine", "--labeler-spec", str(spec)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f'sha256 = "{hashlib.sha256(model.read_bytes()).hexdigest()}"' in err and len(err.strip().splitlines()) == 1


def test_labeler_spec_is_accepted_after_the_subcommand(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    # after the subcommand it is read (and refused for what it is), not an unknown option
    assert main(["zoo", "list", "--labeler-spec", str(bad)]) == EXIT_ERROR
    assert "task is missing" in capsys.readouterr().err


def test_a_retention_outside_its_range_is_a_usage_error(tmp_path, capsys):
    assert main(["relabel", str(tmp_path), "--retention", "1.5"]) == EXIT_USAGE


# 10. model folders found from anywhere
def test_shared_folder_resolution_order(tmp_path, monkeypatch):
    from imutility import paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(paths.SHARED_ENV, raising=False)
    config = tmp_path / "config.toml"
    monkeypatch.setattr(paths, "USER_CONFIG", config)
    beside_clone = Path(paths.__file__).resolve().parents[3] / "shared"
    fallback = beside_clone if beside_clone.is_dir() else Path("..") / "shared"
    assert paths.shared_dir() == fallback  # nothing set, run from elsewhere: beside the clone
    config.write_text('shared = "/from/config"\n')
    assert paths.shared_dir() == Path("/from/config")
    monkeypatch.setenv(paths.SHARED_ENV, "/from/env")
    assert paths.shared_dir() == Path("/from/env")
    assert paths.shared_dir("/explicit") == Path("/explicit")
    monkeypatch.delenv(paths.SHARED_ENV)
    config.write_text("not toml = = =")
    assert paths.shared_dir() == fallback  # a broken config is ignored, not a crash
