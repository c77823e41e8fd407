"""``NFTConfig``: the ``nft`` section, read by runs with ``objective.kind: nft`` (``firered_train.objectives.nft``).

Two kinds of numbers: DiffusionNFT's own (``beta``, ``kl_weight``, ``adv_clip``, ``std_eps``, ``adaptive_weight``
and the old policy's decay schedule; the reference code's defaults, FireRed publishes none of them), and the
sampling round's (how many results per prompt, how many sampler steps, which reward grades them). It lives with
the other sections: the config layer sits below the objectives, which take it as their own config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .coerce import field_error

__all__ = ["NFTConfig", "NFT_REWARDS", "NFT_REWARD_MODES"]

# what ``nft.reward`` may name (``firered_train.prefs.scoring.REWARDS``) and the verifiable reward's modes
# (``firered_bench.grade.reward.REWARD_MODES``); the config layer sits below both, so the names are listed here
# and a test checks they agree
NFT_REWARDS = ("verifiable", "ocr", "judge")
NFT_REWARD_MODES = ("pass", "fraction", "graded")


@dataclass(frozen=True)
class NFTConfig:
    """The numbers of DiffusionNFT. Defaults are the reference code's; FireRed publishes none of them."""

    # b: how far the implicit policies sit from the old one, in (0, 1]. 1 = the reference's default (v+ is the
    # trained velocity itself); its OCR and mixed-reward runs use 0.1. Unknown for FireRed.
    beta: float = 1.0
    # Weight of the mean squared velocity difference to the reference (frozen / adapters-off) model: keeps the
    # policy near where it started. 1e-4 in the reference code. Unknown for FireRed.
    kl_weight: float = 1e-4
    # c: advantages are clipped to [-c, c] before mapping to r; also the loss scale c / b (the reference's
    # adv_clip_max, 5, which is where the report's "5 / b" comes from).
    adv_clip: float = 5.0
    # Added to each group's reward std before dividing (the reference's stat tracker: 1e-4). 0 is allowed: zero-std
    # groups are mapped to A = 0 explicitly.
    std_eps: float = 1e-4
    # Divide each sample's x0-space error by its detached mean absolute error (the reference does). False gives
    # t^2 times the velocity-space loss of the report, for comparisons.
    adaptive_weight: bool = True
    # Old-policy decay d = min(decay_rate * max(0, step - decay_flat), decay_cap), step = optimizer steps done.
    # Reference default 0.001 / 0 / 0.5; its OCR runs 0.0075 / 75 / 0.999 (NFT_PRESETS["ocr"]). Unknown for FireRed.
    decay_rate: float = 0.001
    decay_flat: int = 0
    decay_cap: float = 0.5
    # The sampling round (``firered_train.loop.policy_samples``): K results per prompt from the old policy, by
    # deterministic Euler steps without CFG. The reference samples 24 per prompt with 10 (SD3) steps.
    group_size: int = 8
    sample_steps: int = 10
    # "euler": deterministic steps (the reference); "stochastic": the re-noising sampler (firered_core.sampler),
    # e.g. when the model is used with it, so the round grades what users will see.
    sampler: str = "euler"
    # What grades the results: "verifiable" (the synthetic benchmark's checks; needs the manifest's ``spec``) or
    # "ocr" (the layout-aware OCR reward of a quoted text edit; the ``ocr`` extra) or "judge" (a VLM judge behind
    # an OpenAI-compatible chat server, ``judge_*`` below). ``reward_mode`` is the
    # verifiable reward's: "graded" orders the edits of a prompt even when none passes yet.
    reward: str = "verifiable"
    reward_mode: str = "graded"
    # Added to each result's verifiable reward: this weight when the result is nearer (PSNR) to the sample's
    # target than Picture 1 is (the benchmark's closer-than-the-source guard). 0 = the checks alone. Samples
    # without a source picture get no term.
    closeness_weight: float = 0.0
    # Grade each result after the preserve step (``firered_core.preserve.keep_unedited`` with its default settings:
    # Picture 1's own pixels outside the area the result changed), as a model folder with ``keep_unedited: true``
    # is used and benchmarked. False grades the decoded result as it is.
    keep_unedited: bool = False
    # ``reward: judge``: the chat server (e.g. http://127.0.0.1:8000/v1), its model name, the ratings averaged per
    # result, seconds per request, and the environment variable holding the API key (never the key itself); or,
    # instead of a server, ``judge_local``: a Qwen2.5-VL folder saved by transformers, rated from its logits here.
    judge_endpoint: str = ""
    judge_local: str = ""
    judge_model: str = ""
    judge_passes: int = 1
    judge_timeout_s: float = 120.0
    judge_key_env: str = "FIRERED_JUDGE_API_KEY"

    def __post_init__(self) -> None:
        for name in ("beta", "kl_weight", "adv_clip", "std_eps", "decay_rate", "decay_cap", "closeness_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise field_error(name, f"must be a finite number, got {value!r}")
        if not 0 < self.beta <= 1:
            raise field_error("beta", f"must lie in (0, 1] (1 = v+ is the trained velocity), got {self.beta!r}")
        if not self.adv_clip > 0:
            raise field_error("adv_clip", f"must be > 0, got {self.adv_clip!r}")
        for name in ("kl_weight", "std_eps", "decay_rate", "closeness_weight"):
            if not getattr(self, name) >= 0:
                raise field_error(name, f"must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.decay_cap < 1:
            raise field_error("decay_cap",
                              f"must lie in [0, 1) (1 would freeze the old policy), got {self.decay_cap!r}")
        if isinstance(self.decay_flat, bool) or not isinstance(self.decay_flat, int) or self.decay_flat < 0:
            raise field_error("decay_flat", f"must be an integer >= 0 (optimizer steps), got {self.decay_flat!r}")
        for name, low in (("group_size", 2), ("sample_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise field_error(name, f"must be an integer >= {low}, got {value!r}")
        if self.sampler not in ("euler", "stochastic"):
            raise field_error("sampler", f"must be 'euler' or 'stochastic', got {self.sampler!r}")
        if self.reward not in NFT_REWARDS:
            raise field_error("reward", f"must be one of {', '.join(NFT_REWARDS)}, got {self.reward!r}")
        if self.reward_mode not in NFT_REWARD_MODES:
            raise field_error("reward_mode", f"must be one of {', '.join(NFT_REWARD_MODES)}, got {self.reward_mode!r}")
        if self.closeness_weight and self.reward != "verifiable":
            raise field_error("closeness_weight", f"is a term of the verifiable reward (needs the samples' targets), "
                              f"not of nft.reward: {self.reward}")
        for name in ("judge_endpoint", "judge_local", "judge_model", "judge_key_env"):
            if not isinstance(getattr(self, name), str):
                raise field_error(name, f"must be text, got {getattr(self, name)!r}")
        if self.reward == "judge" and not (self.judge_endpoint.strip() or self.judge_local.strip()):
            raise field_error("judge_endpoint", "nft.reward: judge needs the URL of an OpenAI-compatible chat server, "
                                                "e.g. http://127.0.0.1:8000/v1 (or nft.judge_local: a model folder)")
        if self.judge_endpoint.strip() and self.judge_local.strip():
            raise field_error("judge_local", "the judge is either a chat server (judge_endpoint) or a local model "
                                             "folder (judge_local), not both")
        if isinstance(self.judge_passes, bool) or not isinstance(self.judge_passes, int) or self.judge_passes < 1:
            raise field_error("judge_passes", f"must be an integer >= 1, got {self.judge_passes!r}")
        if isinstance(self.judge_timeout_s, bool) or not isinstance(self.judge_timeout_s, (int, float)) \
                or not self.judge_timeout_s > 0:
            raise field_error("judge_timeout_s", f"must be a number of seconds > 0, got {self.judge_timeout_s!r}")
        for name in ("adaptive_weight", "keep_unedited"):
            if not isinstance(getattr(self, name), bool):
                raise field_error(name, f"must be true or false, got {getattr(self, name)!r}")
