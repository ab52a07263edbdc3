"""The network and what is done with it once trained: the architecture, checkpoints and model folders, the trained
model as the jobs take it, predictions, precision, calibration, metrics, export and the ONNX runner."""
