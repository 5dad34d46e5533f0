"""Semantic segmenters: TFLite (the zoo's DeepLabV3 graphs), ONNX Runtime and TorchScript (a user's own network).

Each backend only runs the graph; :func:`imutility.zoo.base.decode_segmentation` reads what it returns (a class map,
or class scores with the class axis first or last) as the spec's ``options.output`` declares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imutility.errors import InvalidInputError
from imutility.zoo.base import LabelerSpec, Segmenter, default_threads


class TFLiteSegmenter(Segmenter):
    """One image per invoke (the graphs have a fixed batch of 1); quantised inputs and outputs through the tensors'
    own parameters."""

    def __init__(self, spec: LabelerSpec, path: Path):
        from imutility.zoo.backends.tflite import make_interpreter

        self.spec = spec
        self.interpreter = make_interpreter(path, default_threads())
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        shape = tuple(int(v) for v in self.inp["shape"])
        if shape[1:3] != tuple(spec.preprocess.size):
            raise InvalidInputError(f"{path}: input {shape} does not match the declared NHWC size "
                                    f"{tuple(spec.preprocess.size)}")
        self.batch_size = spec.options.batch_size or 8

    def _raw(self, batch: np.ndarray) -> list[np.ndarray]:
        from imutility.zoo.backends.tflite import quantise_input

        it, rows = self.interpreter, []
        for x in batch:
            it.set_tensor(self.inp["index"], np.ascontiguousarray(quantise_input(x[None], self.inp)))
            it.invoke()
            y = it.get_tensor(self.out["index"])[0]
            scale, zero = self.out["quantization"]
            if scale and self.spec.options.output != "classmap":
                y = (y.astype(np.float32) - zero) * scale
            rows.append(y)
        return rows


class OnnxSegmenter(Segmenter):
    """An ONNX Runtime session; a batch at once when the graph's batch axis is free, else image by image."""

    def __init__(self, spec: LabelerSpec, path: Path):
        from imutility.zoo.backends.ort import ort_session

        self.spec = spec
        self.session = ort_session(path)
        self.input = self.session.get_inputs()[0]
        self.batch_size = spec.options.batch_size or 8
        first = self.input.shape[0] if self.input.shape else 1
        self.one_at_a_time = isinstance(first, int) and first == 1

    def _raw(self, batch: np.ndarray) -> list[np.ndarray]:
        x = batch.astype(np.float32) if self.spec.preprocess.dtype == "float32" else batch
        if self.one_at_a_time:
            return [self.session.run(None, {self.input.name: x[i:i + 1]})[0][0] for i in range(len(x))]
        return list(self.session.run(None, {self.input.name: x})[0])


class TorchScriptSegmenter(Segmenter):
    """A TorchScript module (a program: its spec must say ``trust_code``); a dict output (torchvision's
    segmentation models return ``{"out": ...}``) gives its ``"out"``."""

    def __init__(self, spec: LabelerSpec, path: Path, device: str = "cpu"):
        import torch

        self.spec = spec
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval().to(self.device)
        except RuntimeError as e:
            raise InvalidInputError(f"{path}: not a TorchScript file ({str(e).splitlines()[0]})") from e
        self.batch_size = spec.options.batch_size or 8

    def _raw(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            y = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        if isinstance(y, dict):
            y = y["out"]
        if isinstance(y, tuple | list):
            y = y[0]
        return list(y.float().cpu().numpy() if y.is_floating_point() else y.cpu().numpy())


def _need(spec: LabelerSpec, weights_path: Path | None) -> Path:
    if weights_path is None:
        raise ValueError(f"{spec.name}: a segmenter file has no random-initialised form")
    return Path(weights_path)


def build_tflite_segmenter(spec: LabelerSpec, weights_path: Path | None, **_: object) -> Segmenter:
    return TFLiteSegmenter(spec, _need(spec, weights_path))


def build_onnx_segmenter(spec: LabelerSpec, weights_path: Path | None, **_: object) -> Segmenter:
    return OnnxSegmenter(spec, _need(spec, weights_path))


def build_torchscript_segmenter(spec: LabelerSpec, weights_path: Path | None, device: str = "cpu",
                                **_: object) -> Segmenter:
    return TorchScriptSegmenter(spec, _need(spec, weights_path), device)


#: a segmenter's builder, by file format (the zoo's entries and :mod:`imutility.zoo.custom`)
SEGMENTER_BUILDERS = {"tflite": build_tflite_segmenter, "onnx": build_onnx_segmenter,
                      "torchscript": build_torchscript_segmenter}
