"""The training loop: the ``Trainer`` and what one step needs (batches, the loader, the loss step, rollout
inputs, NFT's old-policy samples, optimiser and schedule), the run's data and state, validation, the VAE trainer
and in-process runs.
"""
