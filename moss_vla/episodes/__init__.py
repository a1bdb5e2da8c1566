"""Episode store: zarr v3 recordings of teleoperated episodes and the training-window dataset.

Layout and guarantees: data/README.md. Writing: `EpisodeWriter`; reading: `EpisodeStore`;
training: `WindowDataset` (imported lazily so that recording does not import torch).
"""

from moss_vla.episodes.schema import KEY_NAMES, SCHEMA_VERSION, SchemaError
from moss_vla.episodes.store import EpisodeStore, RecoveryReport, StoreError
from moss_vla.episodes.writer import EpisodeWriteError, EpisodeWriter

__all__ = [
    "KEY_NAMES",
    "SCHEMA_VERSION",
    "EpisodeStore",
    "EpisodeWriteError",
    "EpisodeWriter",
    "RecoveryReport",
    "SchemaError",
    "StoreError",
    "WindowDataset",
]


def __getattr__(name: str):
    if name == "WindowDataset":
        from moss_vla.episodes.window_dataset import WindowDataset

        return WindowDataset
    raise AttributeError(name)
