"""Shipping the aligned policy: export (transformers folder, GGUF), int8 quantisation, pruning, distillation."""
