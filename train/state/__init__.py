"""Training state on disk: atomic, pickle-free checkpoints (``checkpoint``), the tensor/JSON codec they use
(``codec``) and the RNG states that make a resumed run bit-exact (``rng``).
"""
