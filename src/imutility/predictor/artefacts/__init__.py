"""What is made from a trained predictor, after training: its ONNX graphs for the torch-free runtime
(:mod:`.graphs`), an int8 backbone (:mod:`.quantize`), one deployable ONNX file with its deploy spec
(:mod:`.deploy`). Each writer checks its artefact against PyTorch on a probe image. Loading a predictor never
calls any of them."""
