"""Stage 8, export: verified ONNX, and latency measured on a runtime (latency budgets are measured on the exported model)."""
