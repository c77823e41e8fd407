"""firered_train: the training pipeline of FireRed-Image-Edit (pretrain, continued training, SFT, LoRA).

Installed as ``firered_train`` (pyproject maps the plugin's ``train/`` folder to that name); inside ComfyUI it is a
subpackage of the plugin. Modules inside use relative imports only, so both names work. It builds on
``firered_core`` and never imports ComfyUI or the plugin's nodes; of the benchmark (``firered_bench``) only its
graders, for rewards on synthetic edits.

Subpackages, in layer order: a module imports only from its own subpackage and the ones listed before it
(``tests/project/test_layering.py`` enforces this and the absence of import cycles).

- ``data``: edit-sample records, readers (hand-made folders, JSONL manifests, WebDataset tar and parquet shards),
  the Multi-Condition Aware Bucket Sampler, Stochastic Instruction Alignment, pictures fitted to buckets.
- ``config``: the typed training config, its sections and YAML files with ``--a.b=value`` overrides.
- ``scale``: accelerate/DDP processes and FSDP2 sharding.
- ``state``: atomic, pickle-free checkpoints and RNG states.
- ``observe``: metrics log, TensorBoard, loss curves, sample grids, progress.
- ``objectives``: the flow-matching loss, timestep sampling, EMA.
- ``model``: the networks a run trains, built from the config.
- ``export``: LoRA files, diffusers folders with defaults, depth growth.
- ``prefs``: DPO preference pairs scored from the model's own edits (``firered prefs``).
- ``cache``: the latent cache and ``firered cache``.
- ``loop``: the trainer, its step, data, state and validation; the VAE trainer; in-process runs.
- ``cli``: ``firered train`` and ``firered cache``.
"""
