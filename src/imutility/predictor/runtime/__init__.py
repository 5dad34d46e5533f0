"""Running predictors: :class:`~imutility.predictor.runtime.predictor.Predictor` (loading and scoring), the engine
contract and its one scoring path (:mod:`.engine`), the ONNX Runtime and PyTorch engines (:mod:`.onnx_engines`,
:mod:`.torch_engines`), the folder's ``onnx.json`` (:mod:`.sidecar`) and the decoding workers (:mod:`.prepare`).
Imports nothing of training or of the artefact writers; torch only inside the PyTorch engines."""
