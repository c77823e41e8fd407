"""The latent cache: the on-disk store of VAE latents and condition embeddings (``store``), building it
(``build``) and ``firered cache`` for a training config (``command``).
"""
