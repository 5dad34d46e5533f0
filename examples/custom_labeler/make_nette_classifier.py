"""Make a real "own" classifier to register as a labeler: a 10-class Imagenette classifier as an ONNX file.

    python examples/custom_labeler/make_nette_classifier.py OUT_DIR

It is EfficientNet-Lite0's pretrained network (the zoo's file) with its last layer restricted to the 10
Imagenette classes: a genuine 10-way classifier answering in its own classes (tench, English springer, ...),
which is the situation of a user with a model trained for their own categories. Writes
``OUT_DIR/nette_lite0.onnx``, ``OUT_DIR/classes.txt`` and the labeler spec ``OUT_DIR/nette-lite0.toml``
(with the file's SHA-256), ready for ``imutility --labeler-spec OUT_DIR/nette-lite0.toml ...``.
See docs/custom.md for the whole loop.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from imutility import zoo
from imutility.datasets import imagenet_synsets

#: the Imagenette classes: (WordNet id, name)
NETTE = [("n01440764", "tench"), ("n02102040", "English springer"), ("n02979186", "cassette player"),
         ("n03000684", "chain saw"), ("n03028079", "church"), ("n03394916", "French horn"),
         ("n03417042", "garbage truck"), ("n03425413", "gas pump"), ("n03445777", "golf ball"),
         ("n03888257", "parachute")]

SPEC = """name = "nette-lite0"
task = "classification"
format = "onnx"
file = "nette_lite0.onnx"
sha256 = "{sha}"
description = "EfficientNet-Lite0 restricted to the 10 Imagenette classes (examples/custom_labeler)"

[preprocess]
size = [224, 224]
resize = "center_crop"
resize_size = 256
interpolation = "bilinear"
channels = "RGB"
layout = "NCHW"
scale = 1.0
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]

[output]
kind = "logits"
classes = "classes.txt"
"""


class Restricted(torch.nn.Module):
    """A classifier's logits at a few class indices only."""

    def __init__(self, net: torch.nn.Module, index: list[int]):
        super().__init__()
        self.net = net
        self.register_buffer("index", torch.tensor(index))

    def forward(self, x):
        return self.net(x)[:, self.index]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    base = zoo.get_labeler("efficientnet_lite0", runtime="torch")  # the zoo's file, hash-checked
    synsets = imagenet_synsets()
    model = Restricted(base.model, [synsets.index(w) for w, _ in NETTE]).eval()
    onnx_path = out / "nette_lite0.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    (out / "classes.txt").write_text("".join(f"{name}\n" for _, name in NETTE))
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    (out / "nette-lite0.toml").write_text(SPEC.format(sha=sha))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB), {out / 'classes.txt'}, "
          f"{out / 'nette-lite0.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
