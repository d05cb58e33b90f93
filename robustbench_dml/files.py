"""Files written by the package: atomic writes (a reader sees the old file or the complete new one, never a
half-written one, and a crash leaves no stray temp file behind a Python-level error) and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "sha256_file"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _replace(src: str | Path, dst: str | Path) -> None:
    """The one step that makes a written file visible (separate so tests can simulate a crash here)."""
    os.replace(src, dst)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``, fsync dir.

    A crash at any point leaves either the old file (or none) or the complete new one; the temp file is removed
    on any Python-level error. The file gets the ordinary permissions of the user's umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp creates 0600; written files are ordinary shared files
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, doing: str = "writing"):
    """Hold an exclusive lock on ``folder`` (created when absent) while the block runs, so a second process that
    wants to write the same run folder is refused in one line instead of mixing its files in. The lock is the
    kernel's ``flock`` on the folder itself: no lock file is left behind, and a killed holder releases it. A folder
    this call created and the block left empty is removed again."""
    import fcntl

    from robustbench_dml.errors import UserError

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is {doing} {folder}; wait for it to finish or choose another "
                            "folder") from None
        yield folder
    finally:
        os.close(fd)  # releases the lock
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


#: the most a command reads of each kind of file a user hands it (checked before the first byte is read)
READ_LIMITS = {"meta": 1 << 20, "record": 4 << 20, "manifest": 16 << 20, "pointer": 64, "result": 1 << 30,
               "index": 256 << 20, "idx": 1 << 30, "state": 1 << 30, "evidence": 1 << 30}


def read_bounded(path: str | os.PathLike, kind: str, what: str | None = None) -> bytes:
    """The bytes of the regular file ``path``, refused in one line when it is a device, FIFO, socket or folder
    (``/dev/zero`` behind a symlink would be read until the machine runs out of memory; a FIFO would block) or
    larger than ``READ_LIMITS[kind]``. Both are checked on the file itself before it is read, and the read stops one
    byte past the limit in case the file grows meanwhile. ``what`` names the file in the message."""
    import stat as st

    from robustbench_dml.errors import UserError

    path = Path(path)
    limit = READ_LIMITS[kind]
    name = what or str(path)
    info = os.stat(path)  # FileNotFoundError is the caller's to word
    if not st.S_ISREG(info.st_mode):
        raise UserError(f"{name} is not a regular file (a device, FIFO, socket or folder); replace it with the file "
                        "itself")
    if info.st_size > limit:
        raise UserError(f"{name} is {info.st_size:,} bytes, more than the {limit:,} a {kind} file may have; it is "
                        "not the file this command expects")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{name} grew past {limit:,} bytes while it was read; it is not the file this command expects")
    return data


def gunzip_bounded(raw: bytes, limit: int) -> bytes:
    """The gzip stream ``raw`` unpacked, refused with a ValueError saying why when it would unpack to more than
    ``limit`` bytes (a small file that unpacks to terabytes is refused, not unpacked), is damaged or ends early."""
    import zlib

    try:
        unpack = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = unpack.decompress(raw, limit + 1)
    except zlib.error as e:
        raise ValueError(f"damaged gzip data ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if len(data) > limit or unpack.unconsumed_tail:
        raise ValueError(f"unpacks to more than {limit:,} bytes")
    if not unpack.eof:
        raise ValueError("damaged gzip data (the stream ends early)")
    return data
