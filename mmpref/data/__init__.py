"""Typed preference records and their readers/writers."""

from __future__ import annotations

from mmpref.data.io import DataError, atomic_write
from mmpref.data.manifest import read_jsonl_manifest, write_jsonl_manifest
from mmpref.data.records import PreferenceList, PreferencePair, Rating, RecordError, Segment, SegmentPair
from mmpref.data.tables import read_pickapic_parquet, read_ratings_table, write_pickapic_parquet

__all__ = [
    "DataError",
    "PreferenceList",
    "PreferencePair",
    "Rating",
    "RecordError",
    "Segment",
    "SegmentPair",
    "atomic_write",
    "read_jsonl_manifest",
    "read_pickapic_parquet",
    "read_ratings_table",
    "write_jsonl_manifest",
    "write_pickapic_parquet",
]
