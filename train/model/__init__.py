"""The networks a run trains and encodes with: building them from a model config (``components``) and a
random tiny Qwen2.5-VL encoder for tests and small runs (``tiny_encoder``).
"""
