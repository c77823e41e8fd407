"""Training configuration: typed sections, stage YAML files and ``--a.b=value`` overrides.

A run is described by one ``TrainConfig``, a frozen tree of dataclasses (``train_config.py``, sections in
``sections.py``). Stage configs ship as YAML in ``train/configs/`` (pretrain, continued, sft, lora and tiny CPU
variants); a file sets only what differs from the defaults and may extend another with ``base:``.

::

    from firered_train.config import load_config, to_yaml
    cfg = load_config("sft", ["--data.path=pairs/", "--optim.lr=2e-5"])   # a shipped name or a path
    cfg.optim.betas          # (0.9, 0.999)
    print(to_yaml(cfg))      # the complete resolved config

| module | job |
|---|---|
| ``coerce.py`` | the schema is the dataclass annotations: typed conversion, unknown-key errors, override text |
| ``sections.py`` | one dataclass per section (model, lora, data, objective, optim, schedule, ema, ...) |
| ``train_config.py`` | ``TrainConfig`` and the checks that span sections |
| ``dpo_section.py`` | ``DPOConfig``: the section of a DPO run (``objective.kind: dpo``) |
| ``consistency_section.py`` | ``ConsistencyConfig``: the SFT stage's identity loss (``consistency.enabled``) |
| ``nft_section.py`` | ``NFTConfig``: the section of a DiffusionNFT run (``objective.kind: nft``) |
| ``vae_section.py`` | ``VAETrainConfig``: the section of a VAE run (``target: vae``) |
| ``yaml_io.py`` | ``load_config``, overrides, ``base`` chains, ``to_yaml``, atomic ``save_config`` |

Every problem raises ``firered_core.config.ConfigError`` naming the full key (``optim.betas[1]: ...``).
"""

from firered_core.config import ConfigError

from .sections import (CheckpointConfig, DataConfig, EMAConfig, LoggingConfig, LoRAConfig, ModelConfig,
                       ObjectiveConfig, OptimConfig, RolloutConfig, ScheduleConfig, TimestepConfig)
from .dpo_section import DPOConfig
from .consistency_section import ConsistencyConfig
from .nft_section import NFTConfig
from .train_config import TrainConfig
from .vae_section import VAETrainConfig
from .yaml_io import (CONFIG_DIR, apply_overrides, config_from_dict, find_config, load_config, read_yaml_tree,
                      save_config, shipped_configs, to_yaml)

__all__ = [
    "CONFIG_DIR", "CheckpointConfig", "ConfigError", "ConsistencyConfig", "DPOConfig", "DataConfig", "EMAConfig",
    "LoRAConfig", "LoggingConfig",
    "ModelConfig", "NFTConfig", "ObjectiveConfig", "OptimConfig", "RolloutConfig", "ScheduleConfig", "TimestepConfig",
    "TrainConfig", "VAETrainConfig", "apply_overrides", "config_from_dict", "find_config", "load_config",
    "read_yaml_tree", "save_config", "shipped_configs", "to_yaml",
]
