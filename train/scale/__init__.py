"""Training on more than one process: accelerate/DDP set-up and seeds per rank (``distributed``) and FSDP2
sharding of the transformer (``sharding``).
"""
