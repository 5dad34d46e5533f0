"""The CLI in-process through main(argv) and once as a real console script."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from conftest import require_shared
from imutility import __version__
from imutility.cli import main


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "distort" in capsys.readouterr().out


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "paper-jpeg9" in out and "heldout-jpeg" in out


def test_unknown_preset_or_bad_spec_is_a_usage_error(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    assert main(["distort", str(src), str(tmp_path / "o"), "--preset", "paper-jpg9"]) == 2
    assert "Did you mean 'paper-jpeg9'" in capsys.readouterr().err
    assert main(["distort", str(src), str(tmp_path / "o"), "-d", "jpeg:quality=20"]) == 2
    err = capsys.readouterr().err
    assert "'jpeg' takes q, subsampling; got quality" in err and "Traceback" not in err
    assert main(["distort", str(src), str(tmp_path / "o"), "-d", "jpeg:q=abc"]) == 2
    assert not (tmp_path / "o").exists()


def test_missing_source_is_usage_error(tmp_path):
    assert main(["distort", str(tmp_path / "absent"), str(tmp_path / "o")]) == 2


def test_python_dash_m_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "imutility", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and __version__ in res.stdout


@pytest.mark.slow
def test_paper_preset_on_imagenet_sample(tmp_path):
    """The acceptance run: 1000 photos x 9 levels = 9000 images; bpp falls as quality falls."""
    src = require_shared("data", "imagenet-sample")
    assert main(["distort", str(src), str(tmp_path), "--preset", "paper-jpeg9", "--no-progress"]) == 0
    with open(tmp_path / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9000 == len(list(tmp_path.rglob("*.jpg")))
    by_q: dict[float, list[float]] = {}
    for r in rows:
        by_q.setdefault(float(r["level"]), []).append(float(r["bpp"]))
    means = [sum(v) / len(v) for _, v in sorted(by_q.items())]
    assert all(a < b for a, b in zip(means, means[1:], strict=False)), means


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import errno

    from conftest import natural_image
    from imutility import atomic

    src = tmp_path / "src"
    src.mkdir()
    natural_image().save(src / "a.png")

    def full(path, data, durable=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_bytes", full)
    rc = main(["distort", str(src), str(tmp_path / "o"), "-d", "jpeg:q=10", "--no-progress", "-j", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "Traceback" not in err


def test_library_errors_share_one_base_class():
    from imutility.atomic import ConfigMismatchError, CorruptJournalError
    from imutility.distort import DistortionSpecError
    from imutility.errors import ImutilityError
    from imutility.images import ImageLoadError
    from imutility.names import UnknownNameError
    from imutility.predictor.card import PredictorLoadError
    from imutility.reproduce.config import ConfigError
    from imutility.zoo.weights import WeightsError

    for cls in (ConfigMismatchError, CorruptJournalError, DistortionSpecError, ImageLoadError, UnknownNameError,
                PredictorLoadError, ConfigError, WeightsError):
        assert issubclass(cls, ImutilityError), cls
    assert issubclass(UnknownNameError, KeyError) and issubclass(ConfigError, ValueError)  # old bases kept


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """predict -o and export --onnx into a place no file can go (a path below a file: refused even for root)."""
    from conftest import natural_image

    natural_image().save(tmp_path / "a.png")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    for args in (["predict", str(tmp_path / "a.png"), "-o", str(blocker / "scores.jsonl"), "--no-progress"],
                 ["export", "--model", "default", "--onnx", str(blocker / "default.onnx")]):
        assert main(args) == 1, args
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("Error:")]
        assert "Traceback" not in err and len(errors) == 1 and str(blocker) in errors[0]


def test_training_settings_that_cannot_train_are_refused(tmp_path, capsys):
    from imutility.predictor import TrainConfig
    from imutility.reproduce.config import ConfigError, parse_config

    for kwargs, message in (({"size": 7}, "at least 32"), ({"dropout": 2.0}, "dropout"),
                            ({"weight_decay": "x"}, "weight_decay")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(labels=str(tmp_path), **kwargs).validate()
    assert main(["train", str(tmp_path), str(tmp_path / "p"), "--size", "7"]) == 2  # a usage error
    assert "at least 32" in capsys.readouterr().err
    import tomllib
    from importlib import resources

    raw = tomllib.loads(resources.files("imutility").joinpath("resources", "configs", "quick.toml").read_text())
    for key, value in (("size", 7), ("dropout", 2.0), ("weight_decay", "x")):
        bad = {**raw, "predictor": {**raw.get("predictor", {}), key: value}}
        with pytest.raises(ConfigError, match=key):
            parse_config(bad)
