"""One deployable ONNX file: the predictor's network with its card and deploy spec
(:func:`imutility.predictor.deployment.deploy_spec`) in the metadata.

Two ways to the same file: :func:`compose_from_graphs` joins the folder's own ONNX graphs (a content predictor's
backbone features, the column slice the head reads, the head; a fine-tuned one's network) with the ``onnx``
package alone, no PyTorch, so the lean install exports too (``pip install onnx``, 15 MB); :func:`export_onnx`
exports from the PyTorch engine, for a folder without graphs. ``imutility export --onnx`` takes the first where it
can (its file computes exactly what the ONNX engine computes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imutility.predictor.card import PredictorLoadError
from imutility.predictor.deployment import deploy_spec


def export_onnx(predictor, path: str | os.PathLike) -> Path:
    """The network as ONNX (dynamic batch; a content predictor's per-TILE graph), atomically, with the card
    (``imutility.card``) and :func:`deploy_spec` (``imutility.deploy``) in its metadata."""
    import torch

    from imutility.zoo.backends.onnx_export import export_onnx as write

    if not hasattr(predictor.engine, "graph"):
        raise PredictorLoadError("exporting needs the PyTorch engine: load with runtime='torch'")
    path = Path(path)
    s = predictor.card.size
    write(predictor.engine.graph().cpu().eval(), torch.zeros(1, 3, s, s), path, metadata={
        "imutility.card": json.dumps(predictor.card.raw), "imutility.deploy": json.dumps(deploy_spec(predictor.card))})
    predictor.engine.to(predictor.device)
    return path


def export_checked(model: str | os.PathLike, path: str | os.PathLike, models=None) -> tuple[Path, float]:
    """``imutility export --onnx``: the file of :func:`export_onnx` for a predictor folder or built-in name, and how
    far ONNX Runtime running it (with the PyTorch engine's preparation and pooling) is from PyTorch on a probe
    image."""
    import numpy as np

    from imutility.predictor.deployment import probe_image
    from imutility.predictor.runtime.predictor import Predictor

    pred = Predictor.load(model, runtime="torch", models=models)
    probe = probe_image()
    ref = pred(probe)
    out = export_onnx(pred, path)
    pred.use_onnx_runtime(out)
    return out, float(np.abs(pred(probe) - ref).max())


def compose_from_graphs(model: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The deployable file of a predictor folder (or built-in name) from its ONNX graphs, without PyTorch."""
    import onnx
    from onnx import TensorProto, helper

    from imutility import atomic
    from imutility.predictor.builtin import predictor_folder
    from imutility.predictor.card import read_card
    from imutility.predictor.runtime.sidecar import features_key, fitting_sidecar, make_graphs_command

    folder = predictor_folder(model)
    card = read_card(folder)
    side = fitting_sidecar(folder, card)
    if side is None:
        raise PredictorLoadError(f"{folder} has no ONNX graphs for its card: {make_graphs_command(folder)}")
    if card.content is None:
        graph = onnx.load(str(side.locate("network", "network")))
    else:
        feats = onnx.compose.add_prefix(onnx.load(str(side.locate(features_key("fp32"), "features graph"))), "f_")
        head = onnx.load(str(side.locate("head", "head")))
        cols = side.features_columns()
        _rename(feats.graph, feats.graph.input[0].name, "input")
        out = feats.graph.output[0].name
        feats.graph.initializer.extend([helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
                                        (("imutility_starts", cols.start), ("imutility_ends", cols.stop),
                                         ("imutility_axes", 1))])
        feats.graph.node.append(helper.make_node("Slice", [out, "imutility_starts", "imutility_ends",
                                                            "imutility_axes"], ["imutility_features"]))
        del feats.graph.output[:]
        feats.graph.output.append(helper.make_tensor_value_info("imutility_features", TensorProto.FLOAT,
                                                                ["batch", cols.stop - cols.start]))
        graph = onnx.compose.merge_models(feats, head, io_map=[("imutility_features", head.graph.input[0].name)],
                                          prefix2="head_")
        _rename(graph.graph, graph.graph.output[0].name, "logits")
    onnx.helper.set_model_props(graph, {"imutility.card": json.dumps(card.raw),
                                        "imutility.deploy": json.dumps(deploy_spec(card))})
    path = Path(path)
    atomic.write_bytes(path, graph.SerializeToString())
    return path


def _rename(graph, old: str, new: str) -> None:
    """Rename a value everywhere in ``graph`` (inputs, outputs, node inputs and outputs)."""
    for v in [*graph.input, *graph.output]:
        if v.name == old:
            v.name = new
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]


def export_file(model: str | os.PathLike, path: str | os.PathLike, models=None) -> tuple[Path, float, str]:
    """``imutility export --onnx``: the deployable file (from the folder's graphs where it has them, else from
    PyTorch), and the largest difference on a probe image between the file run as docs/deploy.md runs it and the
    predictor's own scores. Returns (path, difference, how it was made)."""
    from imutility.predictor.builtin import predictor_folder
    from imutility.predictor.card import read_card
    from imutility.predictor.deployment import probe_image
    from imutility.predictor.runtime.sidecar import fitting_sidecar

    folder = predictor_folder(model)
    if fitting_sidecar(folder, read_card(folder)) is None:
        out, diff = export_checked(model, path, models)
        return out, diff, "exported from PyTorch"
    from imutility.predictor.runtime.predictor import Predictor

    out = compose_from_graphs(model, path)
    pred = Predictor.load(folder, runtime="onnx")
    probe = probe_image()
    return out, abs(run_deployed(out, probe) - float(pred(probe))), "composed from its ONNX graphs"


def run_deployed(path: str | os.PathLike, image) -> float:
    """The score of one RGB image by a deployable file alone: its card (in the metadata), onnxruntime, the card's
    preparer and score head (what docs/deploy.md's script does from the deploy spec)."""
    import numpy as np
    import onnx

    from imutility.predictor.card import parse_card
    from imutility.predictor.geometry import WindowPreparer
    from imutility.zoo.backends.ort import ort_session

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    card = parse_card(json.loads(props["imutility.card"]), path)
    prepared = (card.tiles if card.tiles is not None else WindowPreparer(card.window))(image)
    out = ort_session(path).run(None, {"input": card.values.normalise(prepared)})[0]
    return float(card.head(out, np.zeros(len(prepared), dtype=np.int64), 1)[0])
