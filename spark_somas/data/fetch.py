"""SHD and SSC in one call: download the official files into a cache directory.

``fetch("shd")`` downloads ``shd_train.h5.gz`` and ``shd_test.h5.gz`` (SSC:
``ssc_train``, ``ssc_valid``, ``ssc_test``) from the Zenke lab's server,
checks each against the MD5 checksum the server publishes beside them
(``md5sums.txt``), unpacks it and returns the directory, ready for
:func:`~spark_somas.data.events.load_shd` / :func:`~spark_somas.data.events.load_ssc`::

    from spark_somas.data import events
    from spark_somas.data import fetch

    data = events.load_shd(fetch.fetch("shd"))

* **Source.** ``base_url``, else ``$SPARK_SOMAS_DATA_URL`` (a mirror), else
  :data:`BASE_URL`: an http(s) URL with a host name or a ``file:///`` URL,
  else :class:`DataURLError` names the argument or variable and its value.
* **Cache.** ``cache_dir`` (default :func:`default_cache_dir`:
  ``$SPARK_SOMAS_DATA/<name>``, else ``$XDG_CACHE_HOME/spark_somas/<name>``,
  else ``~/.cache/spark_somas/<name>``). A file already unpacked there is
  not fetched again: an ``.h5`` only appears, by an atomic rename, once its
  download has matched its checksum and been unpacked whole. Calls into one
  cache, from threads or processes, take turns by a lock on its
  ``.fetch.lock`` file: a call that waited finds the files fetched.
* **Resume.** A download goes to ``<file>.part``; an interrupted one (the
  connection lost, a body cut short) raises :class:`DownloadError` and the
  next call continues from the bytes it has with an HTTP ``Range`` request
  (a server that ignores the range sends the whole file, which then
  replaces them).
* **Checksums.** ``md5sums.txt`` is UTF-8 text of ``<md5>  <file>`` lines
  (``<md5> *<file>`` as ``md5sum -b`` writes them too). A file whose MD5
  differs from the published one raises :class:`ChecksumError` naming the
  file and both checksums, and is deleted, so the next call downloads it
  afresh; one that matches but cannot be unpacked raises
  :class:`DamagedArchiveError` and is deleted too.
* **Full disk.** A disk filling up raises :class:`DiskFullError` naming the
  file, the space needed and the space free; a half-unpacked file is
  removed (the checked archive is kept), a half-downloaded one kept to
  resume from.
* **Progress.** One tqdm bar per file, in bytes (``progress=False``: none).

Nothing here runs at import, and no other function of the package
downloads: training on SHD reads files that are already there, unless
``spark-somas train --download`` (or this function) is asked to fetch them.
The files: Cramer, Stradmann, Schemmel & Zenke (2022), IEEE TNNLS 33:2744,
CC BY 4.0; SHD takes 0.5 GB unpacked, SSC 4.6 GB.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import http.client
import os
import pathlib
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zlib

from spark_somas.errors import RuleError, SparkSomasError, require, violation
from spark_somas.data.events import EVENT_DATASETS

__all__ = ["BASE_URL", "CHECKSUMS", "ChecksumError", "DamagedArchiveError", "DataURLError",
           "DiskFullError", "DownloadError", "default_cache_dir", "fetch", "files_of"]

BASE_URL = "https://zenkelab.org/datasets"
"""Where the Zenke lab serves the Heidelberg spiking data sets and their checksums."""

CHECKSUMS = "md5sums.txt"
"""The published checksum list beside the files: lines ``<md5>  <file name>``."""

DATA_URL_RULE = ("an http(s) URL with a host name or a file URL with an absolute path "
                 "(file:///...), free of spaces and control characters")
"""What ``base_url`` and ``$SPARK_SOMAS_DATA_URL`` must be."""

_CHUNK = 1 << 20  # bytes per read, and per update of the progress bar
_TIMEOUT_S = 60.0  # per blocking socket operation, not per file
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}  # flock on a file system without locks
_BROKEN = (OSError, http.client.HTTPException)  # a connection lost, or an answer that is no HTTP


class DownloadError(SparkSomasError, OSError):
    """A file could not be downloaded (the server's answer, or the network's)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum; it was deleted."""


class DamagedArchiveError(DownloadError):
    """A downloaded archive matches its published checksum but cannot be
    unpacked (the server publishes the checksum of a damaged file); it was
    deleted, with what was unpacked of it."""


class DiskFullError(DownloadError):
    """The disk of the cache filled up; names the file, the space it needs and the space free."""


class DataURLError(DownloadError, RuleError):
    """``base_url`` or ``$SPARK_SOMAS_DATA_URL`` is no http(s) or file URL: a
    :class:`DownloadError` and, as every broken rule, a ``ValueError``."""


def files_of(name: str) -> list[str]:
    """The unpacked file names of data set ``name`` (``"shd"`` or ``"ssc"``)."""
    require(name in EVENT_DATASETS, "name", name, f"one of {sorted(EVENT_DATASETS)}",
            error=RuleError)
    spec = EVENT_DATASETS[name]
    return [spec[k] for k in ("train", "validation", "test") if spec[k]]


def default_cache_dir(name: str) -> pathlib.Path:
    """``$SPARK_SOMAS_DATA/<name>``, else ``$XDG_CACHE_HOME/spark_somas/<name>``,
    else ``~/.cache/spark_somas/<name>``."""
    files_of(name)
    if os.environ.get("SPARK_SOMAS_DATA"):
        return pathlib.Path(os.environ["SPARK_SOMAS_DATA"]) / name
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "spark_somas" / name


def fetch(name: str, cache_dir: str | os.PathLike | None = None, *,
          base_url: str | None = None, progress: bool = True) -> pathlib.Path:
    """Downloads, checks and unpacks data set ``name`` (``"shd"`` or ``"ssc"``)
    into ``cache_dir``; returns that directory.

    Files already unpacked there are kept as they are. ``base_url`` is where
    the files and ``md5sums.txt`` are served: default ``$SPARK_SOMAS_DATA_URL``
    if set (a mirror), else :data:`BASE_URL`. Calls into one directory at
    once take turns; each returns with the files complete.

    Raises:
      ValueError: an unknown ``name``; :class:`DataURLError` for a
        ``base_url`` or ``$SPARK_SOMAS_DATA_URL`` that is no http(s) or file URL.
      ChecksumError: a download that does not match its published MD5 (the
        message names the file; the file is deleted).
      DamagedArchiveError: a download that matches its MD5 but cannot be
        unpacked (deleted, so the next call downloads it again).
      DiskFullError: the disk filled up (the message names the file and the
        space it needs).
      DownloadError: the server refused a file, could not be reached or broke
        off (the next call resumes), ``md5sums.txt`` is not UTF-8, or it lists
        no checksum for a file.
    """
    wanted = files_of(name)
    base_url = _data_url(base_url)
    directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir(name)
    missing = _missing(directory, wanted)
    if not missing:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    checksums = _published_checksums(f"{base_url}/{CHECKSUMS}")
    for file in missing:
        if file + ".gz" not in checksums:
            raise DownloadError(f"{file}.gz: {base_url}/{CHECKSUMS} lists no checksum for it, "
                                "so it cannot be checked; not downloaded")
    with _locked(directory):
        for file in _missing(directory, wanted):  # a call that held the lock may have fetched some
            _fetch_file(file, directory, base_url, checksums, progress=progress)
    return directory


def _missing(directory: pathlib.Path, files: list[str]) -> list[str]:
    """Those of ``files`` not yet unpacked in ``directory``."""
    return [f for f in files if not (directory / f).is_file()]


def _data_url(base_url: str | None) -> str:
    """``base_url``, else ``$SPARK_SOMAS_DATA_URL``, else :data:`BASE_URL`,
    without a trailing slash; refused by name unless it follows :data:`DATA_URL_RULE`."""
    if base_url:
        name, url = "base_url", base_url
    elif os.environ.get("SPARK_SOMAS_DATA_URL"):
        name, url = "$SPARK_SOMAS_DATA_URL", os.environ["SPARK_SOMAS_DATA_URL"]
    else:
        return BASE_URL
    require(_is_data_url(url), name, url, DATA_URL_RULE, error=DataURLError)
    return url.rstrip("/")


def _is_data_url(url: str) -> bool:
    """Whether ``url`` follows :data:`DATA_URL_RULE`."""
    if re.search(r"[\x00-\x20\x7f]", url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a port that is no number in 0 ... 65535 raises ValueError
    except ValueError:
        return False
    if parts.scheme == "file":
        return parts.netloc in ("", "localhost") and parts.path.startswith("/")
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@contextlib.contextmanager
def _locked(directory: pathlib.Path):
    """Holds the lock of ``directory`` (``flock`` on its ``.fetch.lock``) for
    the block: one fetch into it at a time, across threads and processes. On
    a file system without locks (Lustre mounted without ``flock``) the block
    runs unlocked, as fetches did before they took turns."""
    with open(directory / ".fetch.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
        yield


def _fetch_file(file: str, directory: pathlib.Path, base_url: str, checksums: dict[str, str],
                *, progress: bool) -> None:
    """Downloads ``file``'s archive into ``directory``, checks it against
    ``checksums`` and unpacks it there."""
    archive = file + ".gz"
    part = directory / (archive + ".part")
    _download(f"{base_url}/{archive}", part, progress=progress)
    digest = _md5(part)
    if digest != checksums[archive]:
        part.unlink()
        raise ChecksumError(violation(
            f"{archive}: MD5 {digest}", f"the published MD5 {checksums[archive]} "
            f"({base_url}/{CHECKSUMS}); the corrupt download was deleted from {directory}, "
            f"so the next fetch starts it afresh"))
    _unpack(part, directory / file)


def _open(url: str, headers: dict[str, str] | None = None):
    """The response to a GET of ``url``. An HTTP error status is raised as
    urllib's ``HTTPError`` (see :func:`_refused`), any other failure as
    :class:`DownloadError`."""
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                      timeout=_TIMEOUT_S)
    except urllib.error.HTTPError:
        raise
    except OSError as err:  # urllib's URLError, a connection refused, reset or closed
        raise DownloadError(f"{url}: cannot be reached ({_reason(err)})") from None
    except http.client.HTTPException as err:
        raise DownloadError(f"{url}: the server's answer is not HTTP ({_reason(err)})") from None


def _refused(url: str, err: urllib.error.HTTPError) -> DownloadError:
    """The :class:`DownloadError` for the server's refusal ``err`` of ``url``."""
    return DownloadError(f"{url}: HTTP {err.code} {err.reason}")


def _reason(err: BaseException) -> str:
    """What went wrong, in words on one line: urllib's reason, or the error's
    class and message."""
    return " ".join(str(getattr(err, "reason", None) or f"{type(err).__name__}: {err}").split())


def _published_checksums(url: str) -> dict[str, str]:
    """File name -> MD5 from the checksum list at ``url``."""
    try:
        response = _open(url)
    except urllib.error.HTTPError as err:
        raise _refused(url, err) from None
    with response:
        try:
            data = response.read()
        except _BROKEN as err:
            raise DownloadError(f"{url}: the download broke off ({_reason(err)}); "
                                "call fetch again") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DownloadError(violation(f"{url}: byte {data[err.start]:#04x} at offset "
                                      f"{err.start}", "a checksum list is UTF-8 text")) from None
    return {parts[1].removeprefix("*"): parts[0].lower()  # "*": md5sum -b's binary marker
            for parts in map(str.split, text.splitlines()) if len(parts) == 2}


def _download(url: str, part: pathlib.Path, *, progress: bool) -> None:
    """``url`` into ``part``, continuing from the bytes ``part`` already holds."""
    have = _size(part)
    try:
        response = _open(url, {"Range": f"bytes={have}-"} if have else None)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after the bytes we have: complete
            return
        raise _refused(url, err) from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length", "")
        total = int(length) + (have if resumed else 0) if length.isdigit() else None
        try:
            _save(response, part, append=resumed, total=total, progress=progress)
        except _BROKEN as err:
            if getattr(err, "errno", None) in _DISK_FULL:
                raise _disk_full(err, part, "the download", None if total is None else
                                 total - _size(part),
                                 f"the bytes downloaded are kept in {part.name} for the next "
                                 f"fetch to resume from") from None
            raise _broke_off(url, part, total, _reason(err)) from None
    if total is not None and _size(part) < total:
        raise _broke_off(url, part, total, "the connection closed")


def _broke_off(url: str, part: pathlib.Path, total: int | None, why: str) -> DownloadError:
    """The :class:`DownloadError` for a download of ``url`` that broke off
    (``why``) after the bytes now in ``part``, which are kept: the next call
    resumes from them."""
    of = "" if total is None else f" of {total}"
    return DownloadError(f"{url}: the download broke off after {_size(part)}{of} bytes "
                         f"({why}); call fetch again to resume it")


def _size(path: pathlib.Path) -> int:
    """The bytes in file ``path``; 0 if there is none."""
    return path.stat().st_size if path.exists() else 0


def _save(response, part: pathlib.Path, *, append: bool, total: int | None,
          progress: bool) -> None:
    """Writes the body of ``response`` into ``part`` (after its bytes if
    ``append``), with a progress bar of ``total`` bytes."""
    if progress:  # as in loop.fit: tqdm.auto only when a bar is drawn
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    with open(part, "ab" if append else "wb") as out, tqdm(
            total=total, initial=out.tell(), unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress, leave=False) as bar:
        while chunk := response.read1(_CHUNK):  # what has come: kept if the rest does not
            out.write(chunk)
            bar.update(len(chunk))


def _disk_full(err: OSError, path: pathlib.Path, what: str, needed: int | None,
               kept: str) -> DiskFullError:
    """The :class:`DiskFullError` for ``err``, raised while ``what`` (the
    download, the unpacking) wrote ``path`` (``<file>.part``), which needs
    ``needed`` bytes more (``None``: unknown); ``kept`` says what is left."""
    free = shutil.disk_usage(path.parent).free
    needs = "more space" if needed is None else f"{needed:,} bytes"
    return DiskFullError(f"{path.name.removesuffix('.part')}: the disk holding {path.parent} is "
                         f"full ({err.strerror}): {what} needs {needs} free there, {free:,} are; "
                         f"{kept}: free space and call fetch again")


def _md5(path: pathlib.Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _unpack(archive: pathlib.Path, target: pathlib.Path) -> None:
    """Gunzips ``archive`` to ``target`` through a temporary name, then removes
    ``archive``. On failure the temporary file is removed, and a damaged
    ``archive`` too."""
    partial = target.with_name(target.name + ".part")
    try:
        with gzip.open(archive, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            if not dst.tell():
                raise EOFError("it holds no data")
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        partial.unlink(missing_ok=True)
        archive.unlink()
        name = archive.name.removesuffix(".part")
        raise DamagedArchiveError(f"{name}: the archive is damaged ({err}) though it matches the "
                                  f"published MD5; it was deleted from {archive.parent}, so the "
                                  f"next fetch downloads it again") from None
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno not in _DISK_FULL:
            raise
        raise _disk_full(err, partial, "unpacking it", _unpacked_size(archive),
                         f"the partial file was removed and the checked archive "
                         f"{archive.name} kept") from None
    os.replace(partial, target)
    archive.unlink()


def _unpacked_size(archive: pathlib.Path) -> int:
    """How many bytes ``archive`` unpacks to (read through, as gzip keeps the size modulo 2^32)."""
    with gzip.open(archive, "rb") as src:
        return sum(iter(lambda: len(src.read(_CHUNK)), 0))
