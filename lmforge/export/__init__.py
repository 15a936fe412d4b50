"""Deployment formats written from a built model (docs/export.md): ONNX with an ONNX Runtime runtime (`export.onnx`).

GGUF, which lmforge also reads, lives with the other readers and writers of foreign formats in `convert.gguf`.
"""
