"""The model run time: model packages (manifest, verification, install), ONNX Runtime sessions and providers,
autoencoders, text encoders and tokenizers."""
