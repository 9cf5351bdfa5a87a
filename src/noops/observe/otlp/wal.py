"""A write-ahead log: once :meth:`WAL.append` returns, the record survives a crash.

Layout: ``DIR/<first-seq, 20 digits>.wal`` segment files plus ``DIR/checkpoint`` (the highest
sequence number the store has committed, written atomically). Each record is framed as::

    u32 length | u32 crc32(payload-part) | u64 seq | u8 len(signal) | signal | payload

(big endian; ``length`` and the crc cover everything after the crc). ``append`` writes the
frame and ``fsync``\\ s the segment before returning, so a 200 sent after it means durable.

Recovery: :meth:`WAL.replay` yields every record above the checkpoint in order. A short or
crc-failing record at the end of the newest segment is a torn write from a crash: it was
never acknowledged, so it is dropped and the segment truncated there. The same damage in an
older segment means the disk lost acknowledged data: :class:`WalError` is raised.

:meth:`WAL.checkpoint` records that everything ``<= seq`` is in the store and deletes
segments whose records are all covered. Appends from several threads are serialised by an
internal lock; :meth:`WAL.append_batch` writes several records with one fsync (group commit).
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from noops.errors import NoopsError

__all__ = ["WAL", "WalError"]

_HEAD = struct.Struct(">II")
_SEQ = struct.Struct(">QB")
_SUFFIX = ".wal"
MAX_RECORD_BYTES = 256 * 1024 * 1024


class WalError(NoopsError):
    """The write-ahead log is damaged or cannot be written."""

    exit_code = 10
    http_status = 503


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WAL:
    """Segmented, fsync'd, crc-framed log of ``(seq, signal, payload)`` records.

    ``segment_bytes`` is the size after which a new segment starts (a record never spans two).
    """

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._checkpoint = self._read_checkpoint()
        self._fd: int | None = None
        self._size = 0
        self._replayed = False
        self._next = self._checkpoint + 1

    # -- files ---------------------------------------------------------------------------------

    def _segments(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.dir.iterdir():
            if p.name.endswith(_SUFFIX) and p.name[: -len(_SUFFIX)].isdigit():
                out.append((int(p.name[: -len(_SUFFIX)]), p))
        return sorted(out)

    def _read_checkpoint(self) -> int:
        try:
            return int((self.dir / "checkpoint").read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise WalError(f"{self.dir}/checkpoint is corrupt; remove it to replay everything") from exc

    def _write_checkpoint(self, seq: int) -> None:
        tmp = self.dir / "checkpoint.tmp"
        with open(tmp, "w") as f:
            f.write(str(seq))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "checkpoint")
        _fsync_dir(self.dir)

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def _scan(path: Path) -> Iterator[tuple[int, int, str, bytes]]:
        """Yield ``(end_offset, seq, signal, payload)``; stop at the first bad record."""
        with open(path, "rb") as f:
            data = f.read()
        off = 0
        while off + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, off)
            start = off + _HEAD.size
            if length < _SEQ.size or length > MAX_RECORD_BYTES or start + length > len(data):
                return
            body = data[start : start + length]
            if zlib.crc32(body) != crc:
                return
            seq, slen = _SEQ.unpack_from(body)
            signal = body[_SEQ.size : _SEQ.size + slen].decode("ascii", "replace")
            off = start + length
            yield off, seq, signal, body[_SEQ.size + slen :]

    def replay(self) -> Iterator[tuple[int, str, bytes]]:
        """Records above the checkpoint, oldest first; repairs a torn tail. Call before append."""
        segs = self._segments()
        last_seq = self._checkpoint
        for i, (_, path) in enumerate(segs):
            good_end = 0
            for end, seq, signal, payload in self._scan(path):
                good_end = end
                last_seq = max(last_seq, seq)
                if seq > self._checkpoint:
                    yield seq, signal, payload
            size = path.stat().st_size
            if good_end != size:
                if i != len(segs) - 1:
                    raise WalError(
                        f"WAL segment {path} is damaged at byte {good_end} (not the newest segment): "
                        "acknowledged data was lost on disk; move the segment away to continue"
                    )
                with open(path, "r+b") as f:  # torn tail: never acknowledged
                    f.truncate(good_end)
                    f.flush()
                    os.fsync(f.fileno())
        self._next = last_seq + 1
        self._replayed = True

    # -- writing -------------------------------------------------------------------------------

    def _open_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.dir / f"{self._next:020d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        _fsync_dir(self.dir)

    def append(self, signal: str, payload: bytes) -> int:
        """Durably append one record and return its sequence number (fsync'd before return)."""
        return self.append_batch([(signal, payload)])[0]

    def append_batch(self, records: list[tuple[str, bytes]]) -> list[int]:
        """Durably append ``(signal, payload)`` records with one write and one fsync (group
        commit); return their sequence numbers, consecutive and in order. All or none: on
        :class:`WalError` no record is acknowledged (a partial write is a torn tail on replay)."""
        with self._lock:
            if not self._replayed:
                for _ in self.replay():
                    pass
            first = self._next
            frames = []
            for i, (signal, payload) in enumerate(records):
                sig = signal.encode("ascii")
                body = _SEQ.pack(first + i, len(sig)) + sig + payload
                frames.append(_HEAD.pack(len(body), zlib.crc32(body)) + body)
            data = b"".join(frames)
            if self._fd is None or (self._size + len(data) > self.segment_bytes and self._size > 0):
                self._open_segment()
            assert self._fd is not None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fdatasync(self._fd)
            except OSError as exc:
                # Nothing here is acknowledged. Cut what reached the file so the next append does
                # not follow a torn frame; if even that fails, never reuse these numbers.
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self._next = first + len(records)
                raise WalError(f"cannot write the WAL in {self.dir}: {exc}") from exc
            self._size += len(data)
            self._next = first + len(records)
            return list(range(first, first + len(records)))

    def checkpoint(self, seq: int) -> None:
        """The store holds everything ``<= seq``: persist that and delete covered segments."""
        with self._lock:
            if seq <= self._checkpoint:
                return
            self._write_checkpoint(seq)
            self._checkpoint = seq
            segs = self._segments()
            for (_first, path), (next_first, _) in itertools.pairwise(segs):
                if next_first - 1 <= seq:  # every record of this segment is <= seq
                    path.unlink(missing_ok=True)

    @property
    def last_checkpoint(self) -> int:
        return self._checkpoint

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
