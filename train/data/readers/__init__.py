"""Readers: every data format becomes ``EditRecord`` values (see ``docs/DATA_FORMAT.md``).

| format | module | shape |
|---|---|---|
| hand-made folder of pairs | ``folder.py`` | list of records (map-style, for the bucket sampler) |
| JSONL manifest, FireRed field names | ``jsonl.py`` | list of records (map-style) |
| WebDataset tar shards | ``webdataset.py`` + ``stream.py`` | streamed, split by (rank, worker), resumable |
| parquet shards (optional pyarrow) | ``parquet.py`` + ``stream.py`` | streamed, split by (rank, worker), resumable |
"""

from .folder import FolderConfig, read_folder
from .jsonl import JsonlConfig, read_jsonl
from .parquet import iter_parquet_samples
from .stream import ShardReader, ShardStream, StreamConfig, StreamItem, StreamPosition, merge_stream_states
from .webdataset import iter_tar_samples, write_tar_shards

__all__ = [
    "FolderConfig", "JsonlConfig", "ShardReader", "ShardStream", "StreamConfig", "StreamItem", "StreamPosition",
    "iter_parquet_samples", "iter_tar_samples", "merge_stream_states", "read_folder", "read_jsonl",
    "write_tar_shards",
]
