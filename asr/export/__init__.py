"""Deployment formats of a model bundle: ONNX (`asr.export.onnx`)."""
