"""SHD and SSC in one call: download the official files into a cache directory.

``fetch("shd")`` downloads ``shd_train.h5.gz`` and ``shd_test.h5.gz`` (SSC:
``ssc_train``, ``ssc_valid``, ``ssc_test``) from the Zenke lab's server,
checks each against the MD5 checksum the server publishes beside them
(``md5sums.txt``), unpacks it and returns the directory, ready for
:func:`~spark_somas.data.events.load_shd` / :func:`~spark_somas.data.events.load_ssc`::

    from spark_somas.data import events
    from spark_somas.data import fetch

    data = events.load_shd(fetch.fetch("shd"))

* **Cache.** ``cache_dir`` (default :func:`default_cache_dir`:
  ``$SPARK_SOMAS_DATA/<name>``, else ``$XDG_CACHE_HOME/spark_somas/<name>``,
  else ``~/.cache/spark_somas/<name>``). A file already unpacked there is
  not fetched again: an ``.h5`` only appears, by an atomic rename, once its
  download has matched its checksum and been unpacked whole.
* **Resume.** A download goes to ``<file>.part``; an interrupted one
  continues from the bytes it has with an HTTP ``Range`` request (a server
  that ignores the range sends the whole file, which then replaces them).
* **Checksums.** A file whose MD5 differs from the published one raises
  :class:`ChecksumError` naming the file and both checksums, and is deleted,
  so the next call downloads it afresh.
* **Progress.** One tqdm bar per file, in bytes (``progress=False``: none).

Nothing here runs at import, and no other function of the package
downloads: training on SHD reads files that are already there, unless
``spark-somas train --download`` (or this function) is asked to fetch them.
The files: Cramer, Stradmann, Schemmel & Zenke (2022), IEEE TNNLS 33:2744,
CC BY 4.0; SHD takes 0.5 GB unpacked, SSC 4.6 GB.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import urllib.error
import urllib.request

from spark_somas.errors import RuleError, SparkSomasError, require, violation
from spark_somas.data.events import EVENT_DATASETS

__all__ = ["BASE_URL", "CHECKSUMS", "ChecksumError", "DownloadError", "default_cache_dir",
           "fetch", "files_of"]

BASE_URL = "https://zenkelab.org/datasets"
"""Where the Zenke lab serves the Heidelberg spiking data sets and their checksums."""

CHECKSUMS = "md5sums.txt"
"""The published checksum list beside the files: lines ``<md5>  <file name>``."""

_CHUNK = 1 << 20  # bytes per read, and per update of the progress bar
_TIMEOUT_S = 60.0  # per blocking socket operation, not per file


class DownloadError(SparkSomasError, OSError):
    """A file could not be downloaded (the server's answer, or the network's)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum; it was deleted."""


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
    if set (a mirror), else :data:`BASE_URL`.

    Raises:
      ValueError: an unknown ``name``.
      ChecksumError: a download that does not match its published MD5 (the
        message names the file; the file is deleted).
      DownloadError: the server refused a file or could not be reached, or
        ``md5sums.txt`` lists no checksum for a file.
    """
    wanted = files_of(name)
    directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir(name)
    missing = [f for f in wanted if not (directory / f).is_file()]
    if not missing:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    base_url = (base_url or os.environ.get("SPARK_SOMAS_DATA_URL") or BASE_URL).rstrip("/")
    checksums = _published_checksums(f"{base_url}/{CHECKSUMS}")
    for file in missing:
        archive = file + ".gz"
        if archive not in checksums:
            raise DownloadError(f"{archive}: {base_url}/{CHECKSUMS} lists no checksum for it, "
                                "so it cannot be checked; not downloaded")
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
    return directory


def _open(url: str, headers: dict[str, str] | None = None):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                      timeout=_TIMEOUT_S)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: cannot be reached ({getattr(err, 'reason', err)})") from None


def _published_checksums(url: str) -> dict[str, str]:
    try:
        with _open(url) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    return {parts[1]: parts[0].lower() for parts in map(str.split, text.splitlines())
            if len(parts) == 2}


def _download(url: str, part: pathlib.Path, *, progress: bool) -> None:
    """``url`` into ``part``, continuing from the bytes ``part`` already holds."""
    if progress:  # as in loop.fit: tqdm.auto only when a bar is drawn
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, {"Range": f"bytes={have}-"} if have else None)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after the bytes we have: complete
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = None if length is None else int(length) + (have if resumed else 0)
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                unit_divisor=1024, desc=part.name.removesuffix(".part"), disable=not progress,
                leave=False) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
                broke = None if total is None or out.tell() >= total else "the connection closed"
            except OSError as err:
                broke = str(err)
            if broke:  # keep the part: the next call resumes from it
                raise DownloadError(f"{url}: the download broke off after {out.tell()} of "
                                    f"{total} bytes ({broke}); call fetch again to resume it")


def _md5(path: pathlib.Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _unpack(archive: pathlib.Path, target: pathlib.Path) -> None:
    """Gunzips ``archive`` to ``target`` through a temporary name, then removes ``archive``."""
    partial = target.with_name(target.name + ".part")
    with gzip.open(archive, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
    os.replace(partial, target)
    archive.unlink()
