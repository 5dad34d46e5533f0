"""Utility predictor: split, metrics against sklearn/scipy, training, loading failures, ONNX, CLI, the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import natural_image, require_shared
from imutility.cli import EXIT_SKIPPED, main
from imutility.distort import JPEG
from imutility.predictor import Predictor, PredictorLoadError, TrainConfig, train_predictor
from imutility.predictor.artefacts.deploy import export_onnx
from imutility.predictor.training.split import binary_metrics, regression_metrics, split_by_source


def test_split_by_source_keeps_sources_whole():
    sources = np.repeat([f"s{i}" for i in range(50)], 9)
    test = split_by_source(sources, 0.2, seed=3)
    assert not set(sources[test]) & set(sources[~test])
    assert len(set(sources[test])) == 10
    np.testing.assert_array_equal(test, split_by_source(sources, 0.2, seed=3))
    assert not np.array_equal(test, split_by_source(sources, 0.2, seed=4))


def test_binary_metrics_match_hand_values():
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == 0.5 and m["f1"] == 0.5
    assert m["auroc"] == 0.75  # pairs (pos, neg) ranked right: (0.4>0.1), (0.9>0.1), (0.9>0.6); wrong: (0.4<0.6)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]


def test_regression_metrics_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    p = y + rng.normal(scale=0.5, size=50)
    m = regression_metrics(y, p)
    assert m["srcc"] == pytest.approx(spearmanr(y, p).statistic)
    assert m["plcc"] == pytest.approx(pearsonr(y, p).statistic)


def test_training_writes_weights_and_card(tiny_predictor):
    card = json.loads((tiny_predictor / "card.json").read_text())
    assert card["format"] == "imutility-predictor/1" and card["task"] == "classification"
    assert card["data"]["train_sources"] + card["data"]["test_sources"] == 24
    assert card["data"]["test_rows"] == 2 * card["data"]["test_sources"]
    m = card["metrics"]
    assert m["n"] == card["data"]["test_rows"] and sum(map(sum, m["confusion_matrix"])) == m["n"]
    # the card's metrics are those of THIS model on ITS test photos: recompute them from scratch
    from sklearn.metrics import accuracy_score, roc_auc_score

    test = set(json.loads((tiny_predictor / "test_sources.json").read_text()))
    labels_dir = Path(card["data"]["labels"])
    t = pd.read_parquet(labels_dir / "labels.parquet")
    t = t[t["source"].isin(test)]
    from imutility.images import load_image

    scores = Predictor.load(tiny_predictor)([load_image(labels_dir / p) for p in t["path"]])
    assert m["accuracy"] == pytest.approx(accuracy_score(t["label"], scores >= 0.5), abs=1e-9)
    assert m["auroc"] == pytest.approx(roc_auc_score(t["label"], scores), abs=1e-6)
    assert card["weights_init"].startswith("random initialisation")
    assert card["input"]["geometry"] == "crop" and card["recipe"]["name"] == "adamw"
    assert len(card["recipe"]["train_loss"]) == 2


def test_continuous_mode(tiny_labels, tmp_path):
    card = train_predictor(TrainConfig(labels=str(tiny_labels), mode="continuous", backbone="squeezenet1_1",
                                       pretrained=False, size=64, epochs=1, batch_size=8), tmp_path, progress=False)
    assert {"srcc", "plcc", "rmse"} <= set(card.raw["metrics"])
    p = Predictor.load(tmp_path)
    assert p.mode == "continuous" and p([natural_image()]).shape == (1,)


def test_training_with_workers_and_bf16_autocast(tiny_labels, tmp_path):
    """DataLoader workers and bf16 autocast (on this CPU: the same code path a GPU takes) train a usable predictor,
    and the card records the precision and the measured training rate."""
    import torch

    cfg = TrainConfig(labels=str(tiny_labels), backbone="squeezenet1_1", pretrained=False, size=64, epochs=2,
                      batch_size=8, workers=2, precision="bf16")
    card = train_predictor(cfg, tmp_path, progress=False).raw
    assert card["precision"] == "bf16" and card["config"]["workers"] == 2
    assert card["config"]["val_fraction"] == 0.0  # a fine-tuned predictor holds no validation photos out
    expected_images = 2 * card["data"]["train_rows"]
    assert card["train_images_per_second"] == pytest.approx(expected_images / card["train_seconds"], rel=0.3)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state.values())  # autocast: the weights stay float32
    s = Predictor.load(tmp_path)([natural_image()])
    assert s.shape == (1,) and 0 <= s[0] <= 1


def test_bad_training_inputs(tiny_labels, tmp_path):
    with pytest.raises(ValueError, match="not a column"):
        train_predictor(TrainConfig(labels=str(tiny_labels), label_column="nope.label"), tmp_path)
    with pytest.raises(ValueError, match="recipe"):
        train_predictor(TrainConfig(labels=str(tiny_labels), recipe="sgd"), tmp_path)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        train_predictor(TrainConfig(labels=str(tiny_labels), precision="fp16"), tmp_path)


def test_predictor_scores_any_image(tiny_predictor):
    p = Predictor.load(tiny_predictor)
    imgs = [natural_image(10, 300), natural_image(500, 400).convert("L"), natural_image(64, 64).convert("RGBA")]
    s = p(imgs)
    assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()


def test_onnx_runtime_matches_pytorch(tiny_predictor, tmp_path):
    p = Predictor.load(tiny_predictor, runtime="torch")
    imgs = [natural_image(120, 90, seed=s) for s in range(4)]
    ref = p(imgs)
    p.use_onnx_runtime(export_onnx(p, tmp_path / "p.onnx"))
    np.testing.assert_allclose(p(imgs), ref, atol=1e-4)  # the stated tolerance


def test_load_failures(tiny_predictor, tmp_path):
    import shutil

    with pytest.raises(PredictorLoadError, match="not found"):
        Predictor.load(tmp_path / "absent")
    with pytest.raises(PredictorLoadError, match="detection"):
        Predictor.load(tiny_predictor, task="detection")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_predictor, bad)
    data = bytearray((bad / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.pt").write_bytes(bytes(data))
    with pytest.raises(PredictorLoadError, match="differs from the card"):
        Predictor.load(bad)
    (bad / "model.pt").write_bytes(b"not a checkpoint")
    card = json.loads((bad / "card.json").read_text())
    from imutility.zoo.weights import file_sha256

    card["weights_sha256"] = file_sha256(bad / "model.pt")
    (bad / "card.json").write_text(json.dumps(card))
    with pytest.raises(PredictorLoadError, match="corrupt checkpoint"):
        Predictor.load(bad, runtime="torch")
    card["format"] = "something-else"
    (bad / "card.json").write_text(json.dumps(card))
    with pytest.raises(PredictorLoadError, match="not an imutility predictor"):
        Predictor.load(bad)


def test_hash_check_cannot_be_skipped_by_restoring_mtime(tiny_predictor, tmp_path, monkeypatch):
    """Flip a byte, put the old mtime back: the weights must still be refused (small and large files)."""
    import os
    import shutil

    from imutility.zoo import weights as w

    monkeypatch.setenv("IMUTILITY_CACHE", str(tmp_path / "cache"))
    for always in (w.ALWAYS_HASH_BYTES, 0):  # 0: take the cached path a 500 MB file would take
        monkeypatch.setattr(w, "ALWAYS_HASH_BYTES", always)
        bad = tmp_path / f"bad{always}"
        shutil.copytree(tiny_predictor, bad)
        Predictor.load(bad)  # hashed (and, for the large-file rule, cached) once
        f = bad / "model.pt"
        st = f.stat()
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        with open(f, "r+b") as fh:  # same inode, same size
            fh.write(bytes(data))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
        with pytest.raises(PredictorLoadError, match="differs from the card"):
            Predictor.load(bad)


def test_cli_predict_filter_export(tiny_predictor, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(JPEG(2 if i else 95)(natural_image(128, 96, seed=i)).data)
    (src / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    assert main(["predict", str(src), "--model", str(tiny_predictor)]) == EXIT_SKIPPED
    cap = capsys.readouterr()
    lines = [json.loads(x) for x in cap.out.splitlines()]
    assert len(lines) == 3 and all(0 <= x["p_useful"] <= 1 for x in lines)
    assert "broken.jpg" in cap.err
    assert main(["predict", str(src / "0.jpg"), "--model", str(tiny_predictor), "--format", "csv",
                 "-o", str(tmp_path / "p.csv")]) == 0
    assert pd.read_csv(tmp_path / "p.csv").shape == (1, 2)

    pristine = tmp_path / "pristine"
    pristine.mkdir()
    for i in range(3):
        natural_image(128, 96, seed=i).save(pristine / f"{i}.png")
    rc = main(["filter", str(src), "--out", str(tmp_path / "kept"), "--min-utility", "1.0",
               "--replace-with-pristine", str(pristine), "--model", str(tiny_predictor)])
    assert rc == EXIT_SKIPPED  # the broken file
    report = pd.read_csv(tmp_path / "kept" / "filter.csv")
    assert (report["decision"] == "replaced with pristine").sum() == 3  # nothing reaches 1.0
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.png")) == ["0.png", "1.png", "2.png"]
    rc = main(["filter", str(src), "--out", str(tmp_path / "all"), "--min-utility", "0",
               "--model", str(tiny_predictor)])
    assert rc == EXIT_SKIPPED and len(list((tmp_path / "all").glob("*.jpg"))) == 3

    assert main(["export", "--model", str(tiny_predictor), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 100_000 and "|diff|" in capsys.readouterr().out


def test_default_predictor_ships_in_the_package():
    p = Predictor.load("default", task="classification")
    size = (p.source / "model.pt").stat().st_size
    assert size <= 25 * 2**20
    card = p.card.raw
    assert card["metrics"]["n"] > 100 and card["task"] == "classification"
    assert p([natural_image()]).shape == (1,)


def test_default_predictor_separates_heavy_from_light_compression():
    from imutility.images import load_image

    photos = require_shared("data", "photos")
    p = Predictor.load("default")
    imgs = [load_image(f) for f in sorted(photos.iterdir())]
    heavy = p([JPEG(2)(im).image for im in imgs])
    light = p([JPEG(90)(im).image for im in imgs])
    assert light.mean() > heavy.mean() + 0.3, (light, heavy)


def test_predict_works_right_after_install(tmp_path, capsys):
    f = tmp_path / "photo.jpg"
    natural_image(200, 150).save(f, quality=90)
    assert main(["predict", str(f)]) == 0
    assert "p_useful" in capsys.readouterr().out


def test_filter_output_is_exactly_the_kept_set(tiny_predictor, tmp_path, capsys):
    from imutility.jobs.filter import filter_folder

    src = tmp_path / "in"
    src.mkdir()
    for n in ("a", "b", "c"):
        (src / f"{n}.jpg").write_bytes(JPEG(50)(natural_image(128, 96, seed=ord(n))).data)
    p = Predictor.load(tiny_predictor)
    assert main(["filter", str(src), "--out", str(tmp_path / "o"), "--min-utility", "1.5",
                 "--model", str(tiny_predictor)]) == 2  # not a probability
    assert main(["filter", str(src), "--out", str(tmp_path / "o"), "--min-utility", "nan",
                 "--model", str(tiny_predictor)]) == 2
    assert main(["filter", str(src), "--out", str(src / "kept"), "--model", str(tiny_predictor)]) == 1  # inside SRC
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    assert main(["filter", str(src), "--out", str(tmp_path / "busy"), "--model", str(tiny_predictor)]) == 1
    assert (tmp_path / "busy" / "mine.txt").exists()
    out = tmp_path / "o"
    rep = filter_folder(src, out, p, min_utility=0.0)
    assert rep.kept == 3 and sorted(x.name for x in out.iterdir()) == ["a.jpg", "b.jpg", "c.jpg", "filter.csv"]
    assert (out / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    rep = filter_folder(src, out, p, min_utility=1.0)  # a rerun: OUT becomes exactly the new kept set
    assert rep.kept == 0 and sorted(x.name for x in out.iterdir()) == ["filter.csv"]

    class Deleting:
        """The predictor's engine, deleting b.jpg while a.jpg is being scored (a file vanishing mid-run)."""

        card, runtime = p.card, p.runtime

        def to(self, device):
            p.engine.to(device)

        def preparer(self):
            return p.engine.preparer()

        def outputs(self, prepared, device):
            (src / "b.jpg").unlink(missing_ok=True)
            return p.engine.outputs(prepared, device)

    rep = filter_folder(src, tmp_path / "o2", Predictor(Deleting(), p.source, p.placement), min_utility=0.0,
                        batch_size=1)
    assert [r for r, _ in rep.unreadable] == ["b.jpg"] and rep.kept == 2
    table = pd.read_csv(tmp_path / "o2" / "filter.csv")
    assert table.set_index("path").loc["b.jpg", "decision"].startswith("unreadable")


def test_onnx_files_get_the_usual_mode_and_loading_never_writes_graphs(tiny_predictor, tmp_path, monkeypatch):
    """An exported file has the usual mode. A card edited since its graphs were written (another input size: other
    graphs) is never served by them, and loading writes nothing: the default placement takes PyTorch, the ONNX
    runtime is refused with the one command that makes the graphs, and the cache stays empty."""
    import os
    import shutil

    from imutility.predictor.runtime.onnx_engines import OnnxFinetuneEngine

    monkeypatch.setenv("IMUTILITY_CACHE", str(tmp_path / "cache"))
    p = Predictor.load(tiny_predictor, runtime="torch")
    out = export_onnx(p, tmp_path / "m.onnx")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    other = tmp_path / "other"
    shutil.copytree(tiny_predictor, other)
    card = json.loads((other / "card.json").read_text())
    card["input"]["size"] = card["input"]["size"] + 32
    (other / "card.json").write_text(json.dumps(card))
    a = Predictor.load(tiny_predictor)
    assert isinstance(a.engine, OnnxFinetuneEngine) and a.card.size == card["input"]["size"] - 32
    imgs = [natural_image(200, 150)]
    np.testing.assert_allclose(a(imgs), Predictor.load(tiny_predictor, runtime="torch")(imgs), atol=1e-4)
    b = Predictor.load(other)
    assert b.runtime == "torch"  # its graphs were made for another card
    with pytest.raises(PredictorLoadError, match=f"imutility export --model {other} --graphs"):
        Predictor.load(other, runtime="onnx")
    with pytest.raises(PredictorLoadError, match="--graphs"):
        b.use_onnx_runtime()
    assert not (tmp_path / "cache" / "onnx").exists() or not list((tmp_path / "cache" / "onnx").iterdir())


def test_hostile_or_broken_cards_are_refused_or_reported(tiny_predictor, tmp_path, capsys):
    import shutil

    for name, change in (("garbage-input", {"input": "garbage"}), ("no-target", {"target": None}),
                         ("escape", {"weights_file": "../../etc/passwd"}), ("arch", {"architecture": "quantum"})):
        bad = tmp_path / name
        shutil.copytree(tiny_predictor, bad)
        card = json.loads((bad / "card.json").read_text())
        (bad / "card.json").write_text(json.dumps({**card, **change}))
        with pytest.raises(PredictorLoadError):
            Predictor.load(bad)
        assert main(["predict", str(tmp_path), "--model", str(bad)]) == 1  # one line, no traceback
        assert "Traceback" not in capsys.readouterr().err
    # fields of the right name and the wrong kind: refused when the card is read, naming the field, on both runtimes
    natural_image().save(tmp_path / "x.png")
    for name, edit, field in (("zero-std", lambda c: c["input"].update(std=[0.0, 0.0, 0.0]), "input"),
                              ("str-size", lambda c: c["input"].update(size="224"), "input.size"),
                              ("huge-size", lambda c: c["input"].update(size=10**9), "input.size"),
                              ("bad-mode", lambda c: c["target"].update(mode="maybe"), "target.mode"),
                              ("bad-sha", lambda c: c.update(weights_sha256=42), "weights_sha256"),
                              ("nan-mean", lambda c: c["input"].update(mean=[float("nan")] * 3), "input")):
        bad = tmp_path / name
        shutil.copytree(tiny_predictor, bad)
        card = json.loads((bad / "card.json").read_text())
        edit(card)
        (bad / "card.json").write_text(json.dumps(card))
        for runtime in ("torch", "onnx"):
            with pytest.raises(PredictorLoadError, match=field):
                Predictor.load(bad, runtime=runtime)
        rc = main(["predict", str(tmp_path / "x.png"), "--model", str(bad)])
        cap = capsys.readouterr()
        assert rc == 1 and "Traceback" not in cap.err and field in cap.err and not cap.out


def test_export_graphs_makes_an_old_folder_run_on_the_lean_engine(tiny_predictor, tmp_path, capsys):
    """A folder without onnx.json (made before 0.3): `export --graphs` writes its graphs there, and the torch-free
    engine then scores as PyTorch does; a card edited since makes those graphs refused, not misused."""
    import shutil

    from imutility.cli import EXIT_USAGE, main
    from imutility.predictor.runtime.onnx_engines import OnnxFinetuneEngine
    from imutility.predictor.runtime.sidecar import SIDECAR

    old = tmp_path / "old"
    shutil.copytree(tiny_predictor, old)
    (old / SIDECAR).unlink()
    for f in old.glob("*.onnx"):
        f.unlink()
    assert main(["export", "--model", str(old)]) == EXIT_USAGE
    assert main(["export", "--model", str(old), "--graphs"]) == 0
    assert (old / SIDECAR).is_file() and "max |diff|" in capsys.readouterr().out
    lean = Predictor.load(old, runtime="onnx")
    assert isinstance(lean.engine, OnnxFinetuneEngine)
    imgs = [natural_image(150, 100, seed=s) for s in range(3)]
    np.testing.assert_allclose(lean(imgs), Predictor.load(old, runtime="torch")(imgs), atol=1e-5)
    card = json.loads((old / "card.json").read_text())
    card["input"]["size"] += 16
    (old / "card.json").write_text(json.dumps(card))
    with pytest.raises(PredictorLoadError, match="another card"):
        Predictor.load(old, runtime="onnx")
    # an onnx.json edited after it was written is refused too (its own digest), and so is a graph name that
    # would leave the folder
    card["input"]["size"] -= 16
    (old / "card.json").write_text(json.dumps(card))
    side = json.loads((old / SIDECAR).read_text())
    (old / SIDECAR).write_text(json.dumps({**side, "network": {**side["network"], "file": "../x.onnx"}}))
    with pytest.raises(PredictorLoadError, match="edited after it was written"):
        Predictor.load(old, runtime="onnx")
    from imutility.predictor.runtime.sidecar import self_digest

    forged = {**side, "network": {**side["network"], "file": "../x.onnx"}}
    (old / SIDECAR).write_text(json.dumps({**forged, "sha256": self_digest(forged)}))
    with pytest.raises(PredictorLoadError, match="plain file name"):
        Predictor.load(old, runtime="onnx")
