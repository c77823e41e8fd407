"""Readers: every data format becomes ``EditRecord`` values (see ``docs/DATA_FORMAT.md``).

| format | module | shape |
|---|---|---|
| hand-made folder of pairs | ``folder.py`` | list of records (map-style, for the bucket sampler) |
| JSONL manifest, FireRed field names | ``jsonl.py`` | list of records (map-style) |
| WebDataset tar shards | ``webdataset.py`` + ``stream.py`` | streamed, split by (rank, worker), resumable |
| size index of a tar shard | ``tar_index.py`` | list of records (map-style), images read from the shard lazily |
| parquet shards (optional pyarrow) | ``parquet.py`` + ``stream.py`` | streamed, split by (rank, worker), resumable |
| size index of a parquet shard | ``parquet_index.py`` | list of records (map-style), images read from the shard lazily |
| the index file both share | ``shard_index.py`` | ``<shard>.index.json``: atomic, rebuilt when the shard changes |
"""

from .folder import FolderConfig, read_folder
from .jsonl import JsonlConfig, read_jsonl
from .parquet import iter_parquet_samples
from .parquet_index import parquet_records
from .stream import (ShardReader, ShardStream, StreamConfig, StreamEnd, StreamItem, StreamPosition,
                     merge_stream_states)
from .tar_index import tar_records
from .webdataset import iter_tar_samples, write_tar_shards

__all__ = [
    "FolderConfig", "JsonlConfig", "ShardReader", "ShardStream", "StreamConfig", "StreamEnd", "StreamItem",
    "StreamPosition", "iter_parquet_samples", "iter_tar_samples", "merge_stream_states", "parquet_records",
    "read_folder", "read_jsonl", "tar_records", "write_tar_shards",
]
