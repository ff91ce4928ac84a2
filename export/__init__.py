"""Export stage: trained network -> ONNX -> TensorRT engine, with metadata and parity checks."""
