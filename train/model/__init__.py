"""The networks a run trains and encodes with: building them from a model config (``components``) and a
random tiny Qwen2.5-VL encoder for tests and small runs (``tiny_encoder``), the frozen face-feature network of the
consistency loss (``face_features``) and the VAE decode of face regions only, with gradient (``region_decode``).
"""
