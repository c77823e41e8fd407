"""What a run hands over: LoRA files (``lora``), a trained model as a diffusers folder with its defaults
(``default_model``, ``firered export-default``) and a deeper transformer grown from a trained one
(``grow_depth``, ``firered grow-depth``).
"""
