"""int8 features graphs for the CPU: a content predictor's backbone, quantized after training.

A content predictor spends nearly all its time in the frozen backbone's features graph (one pass per tile);
its head and tile pooling are tiny. :func:`add_int8_features` makes an int8 copy of that graph by static
post-training quantization (ONNX Runtime, QDQ format: int8 weights per output channel, uint8 activations with
min-max ranges; what follows the last convolution, the classifier and the confidence features, stays float32)
calibrated on tiles of the caller's photos at several JPEG qualities, and records it in the
predictor's ``onnx.json`` (``features_int8``: file, SHA-256, the calibration). ``Predictor.load(...,
precision="int8")`` then runs it (:class:`imutility.predictor.runtime.onnx_engines.OnnxContentEngine`); the head stays
float32. One int8 graph per backbone weights file, shared like the float32 one: a second predictor on the same
backbone records the existing graph instead of calibrating again.

Faster on CPUs with int8 dot products (VNNI) and not exact: the scores move (docs/performance.md gives the
measured speed, the score differences and the within-level AUROC against float32 on the same test photos).
Making the graph needs the ``onnx`` package (``pip install 'imutility[train]'``); running it does not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imutility import atomic
from imutility.errors import ImutilityError
from imutility.predictor.runtime.sidecar import SIDECAR, backbone_dirs, features_key, read_sidecar

#: JPEG qualities the calibration photos are seen at (the range a predictor judges, from ruined to clean)
CALIBRATION_QUALITIES = (3, 6, 10, 25, 75)


class QuantizationError(ImutilityError, ValueError):
    """A predictor or calibration set int8 cannot be made from (a fine-tuned predictor, no photos, ...)."""


def int8_file_name(features_file: str) -> str:
    """The int8 graph's name beside its float32 features graph's."""
    stem = features_file.removesuffix(".onnx")
    return f"{stem}-int8.onnx"


def calibration_tiles(images: Sequence, preparer, qualities: Sequence[int] = CALIBRATION_QUALITIES,
                      seed: int = 0) -> np.ndarray:
    """The uint8 tiles the network sees for ``images`` (PIL), each JPEG-compressed at a quality drawn from
    ``qualities`` (seeded), cut by the predictor's own ``preparer``."""
    from imutility.distort import JPEG

    rng = np.random.default_rng(seed)
    tiles = [preparer(JPEG(int(rng.choice(qualities)))(im).image) for im in images]
    return np.concatenate(tiles) if tiles else np.zeros((0, 1, 1, 3), np.uint8)


#: 7-bit weights. x86 CPUs without int8 dot products (VNNI: AVX2 only) multiply uint8 activations by int8
#: weights with an instruction that adds two products into a saturating 16-bit sum; full 8-bit weights
#: overflow it (on such a CPU the shipped graph's scores correlated 0.77-0.88 with float32 instead of 0.98).
#: With 7 bits the sum cannot overflow, on every CPU, at the same speed (ONNX Runtime's own advice).
REDUCE_RANGE = True

#: the metadata key of an int8 graph that says what it was calibrated on
CALIBRATION_KEY = "imutility_calibration"


def quantize_graph(features: Path, inputs: np.ndarray, out: Path, calibration: str, batch: int = 16) -> Path:
    """Write the static int8 (QDQ) quantization of the graph ``features``, calibrated on the float32 ``inputs``
    (its own input values), atomically as ``out``, with ``calibration`` (what the inputs were) in its metadata."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([inputs[i:i + batch] for i in range(0, len(inputs), batch)])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(features), str(pre))
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=REDUCE_RANGE, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=after_last_conv(onnx.load(str(pre))))
        model = onnx.load(str(q))
        onnx.helper.set_model_props(model, {CALIBRATION_KEY: calibration})
        atomic.write_bytes(out, model.SerializeToString())
    return out


def after_last_conv(model) -> list[str]:
    """The nodes after the graph's last convolution: the classifier and the confidence features read from its
    logits, which stay float32. Quantized too, they move a confidence head's scores far more than the trunk does
    (on 96 Imagenette photos, score correlation with float32 0.73 instead of 0.98)."""
    nodes = list(model.graph.node)
    last = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=len(nodes) - 1)
    return [n.name for n in nodes[last + 1:]]


def graph_calibration(path: Path) -> str:
    """What an int8 graph was calibrated on (its metadata)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get(CALIBRATION_KEY, "unknown")


def add_int8_features(folder: str | os.PathLike, calibration: Sequence[str | os.PathLike],
                      out_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Give the content predictor in ``folder`` (with its ``onnx.json``) an int8 features graph, calibrated on
    the photos ``calibration`` (paths), written into ``out_dir`` (default: the cache) unless one is found in the
    usual places; record it in ``onnx.json``. Returns the int8 graph's path."""
    from imutility.images import load_image
    from imutility.predictor.artefacts.graphs import record
    from imutility.predictor.card import PredictorLoadError
    from imutility.predictor.runtime.predictor import Predictor
    from imutility.zoo.weights import cache_dir, file_sha256

    folder = Path(folder)
    side = read_sidecar(folder)
    feats = side.graph(features_key("fp32")) if side is not None else None
    if feats is None:
        raise QuantizationError(f"{folder}: int8 needs a content predictor with its ONNX graphs ({SIDECAR}); "
                                "a fine-tuned predictor has no features graph to quantize")
    name = int8_file_name(feats.file)
    found = next((d / name for d in backbone_dirs(folder) if (d / name).is_file()), None)
    if found is None:
        if not calibration:
            raise QuantizationError("no calibration photos given: int8 needs photos to calibrate on")
        try:
            src = side.locate(features_key("fp32"), "features graph")
        except FileNotFoundError as e:
            raise PredictorLoadError(str(e)) from e
        pred = Predictor.load(folder, runtime="onnx")
        tiles = calibration_tiles([load_image(p) for p in calibration], pred.engine.preparer(), seed=seed)
        how = (f"{len(calibration)} photos ({len(tiles)} tiles) at JPEG qualities {list(CALIBRATION_QUALITIES)}, "
               f"seed {seed}, min-max ranges, {'7' if REDUCE_RANGE else '8'}-bit weights, "
               "float32 after the last convolution")
        found = quantize_graph(src, pred.card.values.normalise(tiles), Path(out_dir or cache_dir() / "onnx") / name,
                               how)
    record(folder, {features_key("int8"): {"file": name, "sha256": file_sha256(found),
                                           "calibration": graph_calibration(found)}})
    return found


def make_int8(model: str | os.PathLike, calibration: Sequence[str | os.PathLike],
              out_dir: str | os.PathLike | None = None, seed: int = 0) -> tuple[Path, float]:
    """``imutility export --int8``: :func:`add_int8_features` for a predictor folder or built-in name, and how far
    its int8 scores are from PyTorch's float32 ones on a probe image."""
    from imutility.predictor.deployment import probe_image
    from imutility.predictor.runtime.predictor import Predictor

    ref = Predictor.load(model, runtime="torch")
    probe = probe_image()
    path = add_int8_features(ref.source, calibration, out_dir, seed)
    q = Predictor.load(ref.source, runtime="onnx", precision="int8")
    return path, float(np.abs(q(probe) - ref(probe)).max())
