"""Make real "own" classifiers to register as labelers: 10-class Imagenette classifiers as ONNX files.

    python examples/custom_labeler/make_nette_classifier.py OUT_DIR [BASE ...]

Each is a pretrained zoo network (the zoo's file, hash-checked; BASE defaults to efficientnet_lite0 and
efficientnet_lite2) with its last layer restricted to the 10 Imagenette classes: a genuine 10-way classifier
answering in its own classes (tench, English springer, ...), the situation of a user with a model trained for
their own categories. Writes ``OUT_DIR/nette_<base>.onnx``, ``OUT_DIR/classes.txt`` and a labeler spec
``OUT_DIR/nette-<short base>.toml`` per base (with the file's SHA-256), ready for
``imutility --labeler-spec OUT_DIR/nette-lite0.toml ...``. See docs/custom.md for the whole loop.
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

SPEC = """name = "{name}"
task = "classification"
format = "onnx"
file = "{file}"
sha256 = "{sha}"
description = "{base} restricted to the 10 Imagenette classes (examples/custom_labeler)"

[preprocess]
size = [{size}, {size}]
resize = "center_crop"
resize_size = {resize_size}
interpolation = "{pre.interpolation}"
channels = "{pre.channels}"
layout = "NCHW"
scale = {pre.scale}
mean = {mean}
std = {std}

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


def make(out: Path, base_name: str) -> Path:
    """Write one restricted classifier and its spec into ``out``; returns the spec file."""
    base = zoo.get_labeler(base_name, runtime="torch")  # the zoo's file, hash-checked
    pre = base.spec.preprocess
    synsets = imagenet_synsets()
    model = Restricted(base.model, [synsets.index(w) for w, _ in NETTE]).eval()
    short = base_name.replace("efficientnet_", "")
    onnx_path = out / f"nette_{short}.onnx"
    h, w = pre.size
    torch.onnx.export(model, (torch.zeros(1, 3, h, w),), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    spec = out / f"nette-{short}.toml"
    spec.write_text(SPEC.format(name=f"nette-{short}", file=onnx_path.name, sha=sha, base=base_name, size=h,
                                resize_size=pre.resize_size, pre=pre, mean=list(pre.mean), std=list(pre.std)))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB) and {spec}")
    return spec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{name}\n" for _, name in NETTE))
    for base_name in argv[1:] or ["efficientnet_lite0", "efficientnet_lite2"]:
        make(out, base_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
