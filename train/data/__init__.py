"""Training data: records, readers, the Multi-Condition Aware Bucket Sampler and Stochastic Instruction Alignment.

| module | job |
|---|---|
| ``record.py`` | ``EditRecord`` (0..N sources, target, EN/CN texts, task, id), ``ImageRef``, ``BadSampleError`` |
| ``skips.py`` | ``SkipLog``: counts and logs skipped samples by id |
| ``preference.py`` | ``PreferenceRecord`` (sources, instruction, winner, loser, scores) and its JSONL reader (DPO) |
| ``pairs.py`` | preference pairs as samples: winners for the sampler, losers fitted to the winner's size |
| ``readers/`` | hand-made folders, JSONL manifests, WebDataset tar and parquet shards (streamed) |
| ``buckets.py`` | bucket keys (aspects clamped and rounded) and crop-minimising bucket sizes |
| ``bucket_sampler.py`` | ``BucketBatchSampler``: step-seeded, rank-agreed batches within a token budget |
| ``references.py`` | finding and rewriting "Picture 2" / "图2" references |
| ``sia.py`` | Stochastic Instruction Alignment: drop/shuffle sources, realign text, text drop |

The formats are documented for users in ``docs/DATA_FORMAT.md``.
"""

from .bucket_sampler import BatchPlan, BucketBatchSampler, BucketSamplerConfig
from .buckets import BucketDims, BucketKey, Dims, aspect_bucket, bucket_dims, bucket_key, slot_dims
from .preference import PreferenceRecord, read_preferences
from .record import BadSampleError, EditRecord, ImageRef, SkipReason
from .references import find_references, realign
from .sia import SIAConfig, SourcePlan, align, choose_instruction, plan_sources
from .skips import SkipLog

__all__ = [
    "BadSampleError", "BatchPlan", "BucketBatchSampler", "BucketDims", "BucketKey", "BucketSamplerConfig", "Dims",
    "EditRecord", "ImageRef", "PreferenceRecord", "SIAConfig", "SkipLog", "SkipReason", "SourcePlan", "align",
    "aspect_bucket", "bucket_dims", "bucket_key", "choose_instruction", "find_references", "plan_sources",
    "read_preferences", "realign", "slot_dims",
]
