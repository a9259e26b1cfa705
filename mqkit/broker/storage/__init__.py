"""On-disk storage of the native broker (``native://``): segment files and group state.

* :class:`Storage` -- one locked data directory: logs per (topic, partition),
  the state store, retention, the recovery report.
* :class:`FileLog` -- a partition as append-only segment files (``PartitionLog``).
* :class:`FileStateStore` -- topics and group state as journal + snapshot (``StateStore``).

Standard library only.  Formats are described in :mod:`.frame`, :mod:`.index`
and :mod:`.journal`.
"""

from mqkit.broker.storage.filelog import FileLog, StorageCorruptionError
from mqkit.broker.storage.report import RecoveryEntry, RecoveryReport
from mqkit.broker.storage.state import FileStateStore
from mqkit.broker.storage.storage import Storage

__all__ = [
    "FileLog",
    "FileStateStore",
    "RecoveryEntry",
    "RecoveryReport",
    "Storage",
    "StorageCorruptionError",
]
