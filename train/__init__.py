"""firered_train: the training pipeline of FireRed-Image-Edit (pretrain, continued training, SFT, LoRA).

Installed as ``firered_train`` (pyproject maps the plugin's ``train/`` folder to that name); inside ComfyUI it is a
subpackage of the plugin. Modules inside use relative imports only, so both names work. It builds on
``firered_core`` and never imports ComfyUI or the plugin's nodes.

Subpackages:

- ``data``: edit-sample records, readers (hand-made folders, JSONL manifests, WebDataset tar and parquet shards),
  the Multi-Condition Aware Bucket Sampler and Stochastic Instruction Alignment.
"""
