"""spark_somas.fetch against a local HTTP server (127.0.0.1, started here,
shut down by the fixture or after 120 s at the latest): generated SHD/SSC
files in the official layout, gzipped, with their md5sums.txt. Downloads
resume with Range requests, a corrupt file is refused by name and deleted,
cached files are not fetched again, and the CLI's ``train --download``
trains on what it fetched. Whatever goes wrong — a body cut short, a
malformed URL, an archive damaged though its checksum matches, a full disk,
a checksum list that cannot be read — is one named error, and the next call
works once the cause is gone; concurrent calls into one cache each end with
the complete files. Nothing here reaches the network."""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from spark_somas import cli, events, fetch
from test_events import make_samples, write_events_file


class Server:
    """Serves ``files`` (name -> bytes) with Range support; records requests.

    ``drop_after[name] = k``: the next response for ``name`` sends k bytes of
    its body and closes the connection (an interrupted download).
    ``raw[name] = b"..."``: the next response for ``name`` is these bytes,
    status line and headers included, then the connection closes.
    ``ignore_range``: answer every request with the whole file (200).
    ``pause``: seconds to wait halfway through each body (a slow server).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files, self.drop_after, self.ignore_range, self.requests = dict(files), {}, False, []
        self.raw, self.pause = {}, 0.0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                name = self.path.removeprefix("/datasets/")
                owner.requests.append((name, self.headers.get("Range")))
                if name in owner.raw:
                    self.wfile.write(owner.raw.pop(name))
                    self.close_connection = True
                    return
                if name not in owner.files:
                    self.send_error(404)
                    return
                body, start = owner.files[name], 0
                ranged = self.headers.get("Range") and not owner.ignore_range
                if ranged:
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = owner.drop_after.pop(name, None)
                body = body[start:] if cut is None else body[start:start + cut]
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                time.sleep(owner.pause)
                self.wfile.write(body[len(body) // 2:])
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.deadline = threading.Timer(120.0, self.httpd.shutdown)  # stops by itself
        self.thread.start()
        self.deadline.start()

    def close(self):
        self.deadline.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


def gzipped_events(path, rng, n, n_classes) -> bytes:
    write_events_file(path, *make_samples(rng, n, n_classes))
    return gzip.compress(path.read_bytes(), mtime=0)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """name.h5.gz -> bytes for SHD (30 + 10 samples) and SSC (12 + 6 + 6), and the raw .h5."""
    d = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    out = {}
    for name, n, classes in (("shd_train.h5", 30, 20), ("shd_test.h5", 10, 20),
                             ("ssc_train.h5", 12, 35), ("ssc_valid.h5", 6, 35),
                             ("ssc_test.h5", 6, 35)):
        out[name + ".gz"] = gzipped_events(d / name, rng, n, classes)
    return out, d


def md5sums(files: dict[str, bytes], marker: str = " ", newline: str = "\n") -> str:
    """The checksum list of ``files``: ``<md5> <marker><name>`` lines (``"*"``: md5sum -b)."""
    return "".join(f"{hashlib.md5(b).hexdigest()} {marker}{n}{newline}" for n, b in files.items())


@pytest.fixture
def server(archives):
    files, _ = archives
    srv = Server({**files, fetch.CHECKSUMS: md5sums(files).encode()})
    yield srv
    srv.close()


def test_fetch_downloads_checks_and_unpacks(server, archives, tmp_path):
    _, raw = archives
    directory = fetch.fetch("shd", tmp_path / "cache", base_url=server.url, progress=False)
    assert directory == tmp_path / "cache"
    assert sorted(p.name for p in directory.iterdir()) == [".fetch.lock", "shd_test.h5",
                                                           "shd_train.h5"]
    for name in ("shd_train.h5", "shd_test.h5"):
        assert (directory / name).read_bytes() == (raw / name).read_bytes()
    data = events.load_shd(directory, steps=10)
    assert data.x_train.shape == (30, 10, 700) and data.x_test.shape == (10, 10, 700)
    # Cached: a second call asks the server nothing.
    asked = len(server.requests)
    fetch.fetch("shd", directory, base_url=server.url, progress=False)
    assert len(server.requests) == asked


def test_fetch_ssc_gets_its_three_files(server, tmp_path):
    directory = fetch.fetch("ssc", tmp_path, base_url=server.url, progress=False)
    assert sorted(p.name for p in directory.iterdir()) == [
        ".fetch.lock", "ssc_test.h5", "ssc_train.h5", "ssc_valid.h5"]
    assert events.load_ssc(directory, steps=5, holdout="validation").x_test.shape[0] == 6


def test_an_interrupted_download_resumes_with_a_range_request(server, archives, tmp_path):
    files, raw = archives
    size = len(files["shd_train.h5.gz"])
    server.drop_after["shd_train.h5.gz"] = size // 3
    with pytest.raises(fetch.DownloadError, match="shd_train.h5.gz.*call fetch again to resume"):
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    part = tmp_path / "shd_train.h5.gz.part"
    assert part.stat().st_size == size // 3
    fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert ("shd_train.h5.gz", f"bytes={size // 3}-") in server.requests
    assert (tmp_path / "shd_train.h5").read_bytes() == (raw / "shd_train.h5").read_bytes()
    assert not part.exists()


def test_a_complete_part_is_checked_not_downloaded_again(server, archives, tmp_path):
    files, raw = archives
    for name in ("shd_train.h5.gz", "shd_test.h5.gz"):
        (tmp_path / (name + ".part")).write_bytes(files[name])
    fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert (tmp_path / "shd_test.h5").read_bytes() == (raw / "shd_test.h5").read_bytes()
    assert all(r == "bytes=" + str(len(files[n])) + "-"
               for n, r in server.requests if n.endswith(".gz"))


def test_a_server_ignoring_range_restarts_the_file(server, archives, tmp_path):
    files, raw = archives
    (tmp_path / "shd_train.h5.gz.part").write_bytes(b"stale bytes of another file")
    server.ignore_range = True
    fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert (tmp_path / "shd_train.h5").read_bytes() == (raw / "shd_train.h5").read_bytes()


def test_a_corrupt_file_is_refused_by_name_and_deleted(server, archives, tmp_path):
    files, _ = archives
    good = files["shd_test.h5.gz"]
    server.files["shd_test.h5.gz"] = good[:-10] + bytes(10)  # same size, wrong bytes
    with pytest.raises(fetch.ChecksumError,
                       match=r"shd_test.h5.gz: MD5 [0-9a-f]{32} violates the rule: the published "
                             f"MD5 {hashlib.md5(good).hexdigest()}"):
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert not (tmp_path / "shd_test.h5").exists()
    assert not (tmp_path / "shd_test.h5.gz.part").exists()
    assert (tmp_path / "shd_train.h5").exists()  # the good file is kept
    server.files["shd_test.h5.gz"] = good
    fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert (tmp_path / "shd_test.h5").exists()


def test_missing_checksum_and_unknown_names_are_refused(server, tmp_path):
    server.files[fetch.CHECKSUMS] = b""
    with pytest.raises(fetch.DownloadError, match="md5sums.txt lists no checksum"):
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"name = 'mnist' violates the rule: one of"):
        fetch.fetch("mnist", tmp_path)
    with pytest.raises(fetch.DownloadError, match="HTTP 404"):
        fetch.fetch("shd", tmp_path, base_url=server.url + "/nowhere", progress=False)


def test_unreachable_server_is_a_download_error(tmp_path):
    srv = Server({})
    url = srv.url
    srv.close()  # nothing listens on that port any more
    with pytest.raises(fetch.DownloadError, match="cannot be reached"):
        fetch.fetch("shd", tmp_path, base_url=url, progress=False)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_SOMAS_DATA", str(tmp_path))
    assert fetch.default_cache_dir("ssc") == tmp_path / "ssc"
    monkeypatch.delenv("SPARK_SOMAS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.default_cache_dir("shd") == tmp_path / "xdg" / "spark_somas" / "shd"


def test_cli_train_download_fetches_then_trains(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARK_SOMAS_DATA_URL", server.url)
    monkeypatch.setenv("SPARK_SOMAS_DATA", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert cli.main(["train", "--task", "shd", "--download", "--epochs", "1", "--hidden", "6",
                     "--steps", "8", "--batch-size", "10", "--no-validation", "--out", str(out),
                     "--no-progress"]) == 0
    assert (tmp_path / "cache" / "shd" / "shd_train.h5").exists()
    assert "Dataset('shd', train=(30, 8, 700), test=(10, 8, 700)" in capsys.readouterr().out
    assert json.loads((out / "train_shd_adex.json").read_text())["history"]["epoch"] == [1]


def test_cli_download_errors_are_one_line(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARK_SOMAS_DATA_URL", server.url)
    server.files["shd_train.h5.gz"] = b"not a gzip"
    assert cli.main(["train", "--task", "shd", "--download", "--data-dir", str(tmp_path / "d"),
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--download: shd_train.h5.gz: MD5" in err, err
    monkeypatch.setenv("SPARK_SOMAS_DATA_URL", "zenkelab.org/datasets")
    assert cli.main(["train", "--task", "shd", "--download", "--data-dir", str(tmp_path / "d"),
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and ("--download: $SPARK_SOMAS_DATA_URL = "
                                           "'zenkelab.org/datasets' violates the rule") in err, err
    assert cli.main(["train", "--task", "digits", "--download", "--out",
                     str(tmp_path / "out")]) == 1
    assert "--download violates the rule: only for --task shd or ssc" in capsys.readouterr().err


def test_nothing_downloads_by_default(tmp_path, capsys, monkeypatch):
    """Without --download, a missing SHD directory is an error, not a download."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert cli.main(["train", "--task", "shd", "--data-dir", str(tmp_path),
                     "--out", str(tmp_path / "out")]) == 1
    assert "shd_train.h5 is missing" in capsys.readouterr().err


def assert_fetches_whole(url, raw, directory):
    """A call fetches SHD from ``url`` into ``directory`` whole, leaving no temporary file."""
    assert fetch.fetch("shd", directory, base_url=url, progress=False) == directory
    for name in ("shd_train.h5", "shd_test.h5"):
        assert (directory / name).read_bytes() == (raw / name).read_bytes()
    assert not list(directory.glob("*.part"))


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(body: bytes, size: int = 1000) -> bytes:
    """``body`` in HTTP's chunked transfer coding, ``size`` bytes a chunk."""
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


CUTS = {  # a response gone wrong, from the chunked coding of the body it should have sent,
    # and how many bytes of that body it leaves to resume from
    "inside the first size line": (lambda wire: CHUNKED + wire[:2], 0),
    "after the first size line": (lambda wire: CHUNKED + wire[:5], 0),
    "inside a chunk": (lambda wire: CHUNKED + wire[:500], 495),
    "at a chunk boundary": (lambda wire: CHUNKED + wire[:1007], 1000),
    "after the data, before its last CRLF": (lambda wire: CHUNKED + wire[:-7], "all"),
    "a size line that is no number": (lambda wire: CHUNKED + b"zz\r\n" + wire[5:], 0),
    "a status line that is no HTTP": (lambda wire: b"garbage\r\n", 0),
    "no answer at all": (lambda wire: b"", 0),
    "a length that is no number": (  # read to the end; its checksum is wrong: deleted
        lambda wire: b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n" + wire[5:500], 0),
}


@pytest.mark.parametrize("cut", CUTS)
def test_a_response_cut_short_is_a_download_error_and_the_next_call_resumes(
        server, archives, tmp_path, cut):
    files, raw = archives
    body = files["shd_train.h5.gz"]
    assert len(body) > 3000  # several chunks
    response, kept = CUTS[cut]
    server.raw["shd_train.h5.gz"] = response(chunked(body))
    with pytest.raises(fetch.DownloadError, match=r"shd_train\.h5\.gz: ") as caught:
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert "\n" not in str(caught.value)  # one line
    assert_fetches_whole(server.url, raw, tmp_path)
    kept = len(body) if kept == "all" else kept
    assert ("shd_train.h5.gz", f"bytes={kept}-" if kept else None) == server.requests[-2]


@pytest.mark.parametrize("cut", ["after the first size line", "a status line that is no HTTP"])
def test_a_checksum_list_cut_short_is_a_download_error(server, archives, tmp_path, cut):
    _, raw = archives
    server.raw[fetch.CHECKSUMS] = CUTS[cut][0](chunked(server.files[fetch.CHECKSUMS], size=100))
    with pytest.raises(fetch.DownloadError, match=r"/md5sums\.txt: "):
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert_fetches_whole(server.url, raw, tmp_path)


MALFORMED_URLS = ["zenkelab.org/datasets", "htps://zenkelab.org/datasets",
                  "ftp://zenkelab.org/datasets", "http:///datasets", "http://[::1/datasets",
                  "http://zenkelab.org:port/datasets", "http://zenkelab.org:99999/datasets",
                  "http://zenkelab .org/datasets", "https://zenkelab.org/data\nsets",
                  " https://zenkelab.org/datasets", "file:datasets", "file://host/datasets"]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_data_url_is_refused_by_name(monkeypatch, tmp_path, url):
    rule = "violates the rule: an http(s) URL with a host name or a file URL with an absolute"
    monkeypatch.setenv("SPARK_SOMAS_DATA_URL", url)
    with pytest.raises(fetch.DataURLError,
                       match=re.escape(f"$SPARK_SOMAS_DATA_URL = {url!r} {rule}")):
        fetch.fetch("shd", tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match=re.escape(f"base_url = {url!r} {rule}")):
        fetch.fetch("shd", tmp_path / "cache", base_url=url, progress=False)
    assert not (tmp_path / "cache").exists()  # refused before anything is written


def test_a_file_url_and_an_upper_case_scheme_are_data_urls(server, archives, tmp_path):
    _, raw = archives
    served = tmp_path / "served"
    served.mkdir()
    for name, body in server.files.items():
        (served / name).write_bytes(body)
    assert_fetches_whole(served.as_uri() + "/", raw, tmp_path / "from_file")
    assert_fetches_whole(server.url.replace("http", "HTTP"), raw, tmp_path / "from_http")


DAMAGES = {  # an archive damaged after its checksum was taken
    "cut inside its header": lambda gz: gz[:5],
    "cut after its header": lambda gz: gz[:10],
    "cut halfway": lambda gz: gz[:len(gz) // 2],
    "without its trailer": lambda gz: gz[:-8],
    "without its size": lambda gz: gz[:-4],
    "with a wrong CRC": lambda gz: gz[:-8] + bytes(4) + gz[-4:],
    "with zeroed data": lambda gz: gz[:len(gz) // 2] + bytes(64) + gz[len(gz) // 2 + 64:],
    "with bytes after it": lambda gz: gz + b"not gzip",
    "not gzip at all": lambda gz: b"<html>Service unavailable</html>",
    "empty": lambda gz: b"",
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_an_archive_damaged_though_its_checksum_matches_is_deleted_and_fetched_again(
        server, archives, tmp_path, damage):
    files, raw = archives
    bad = DAMAGES[damage](files["shd_train.h5.gz"])
    server.files["shd_train.h5.gz"] = bad
    server.files[fetch.CHECKSUMS] = md5sums({**files, "shd_train.h5.gz": bad}).encode()
    for _ in range(2):  # each call downloads it again: no damaged copy is kept
        asked = len(server.requests)
        with pytest.raises(fetch.DamagedArchiveError,
                           match=r"shd_train\.h5\.gz: the archive is damaged \(.*\) though it "
                                 r"matches the published MD5; it was deleted"):
            fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
        assert ("shd_train.h5.gz", None) in server.requests[asked:]
        assert not list(tmp_path.glob("shd_train*"))
    server.files["shd_train.h5.gz"] = files["shd_train.h5.gz"]
    server.files[fetch.CHECKSUMS] = md5sums(files).encode()
    assert_fetches_whole(server.url, raw, tmp_path)


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"),
                                    reason="needs /dev/full, a device whose writes fail: full")


@needs_dev_full
@pytest.mark.parametrize("file", ["shd_train.h5", "shd_test.h5"])
def test_a_full_disk_while_unpacking_names_the_file_and_the_space_it_needs(
        server, archives, tmp_path, file):
    _, raw = archives
    partial = tmp_path / (file + ".part")
    partial.symlink_to("/dev/full")  # every write to it fails with ENOSPC
    size = (raw / file).stat().st_size
    with pytest.raises(fetch.DiskFullError, match=rf"{file}: the disk holding {tmp_path} is full "
                                                  rf"\(No space left on device\): unpacking it "
                                                  rf"needs {size:,} bytes free there, [\d,]+ are"):
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert not partial.is_symlink() and not (tmp_path / file).exists()
    assert (tmp_path / (file + ".gz.part")).exists()  # the checked archive is kept
    asked = len(server.requests)
    assert_fetches_whole(server.url, raw, tmp_path)
    assert all(r for n, r in server.requests[asked:] if n == file + ".gz")  # not fetched again


@needs_dev_full
def test_a_full_disk_while_downloading_names_the_file_and_the_space_it_needs(
        server, archives, tmp_path):
    files, raw = archives
    part = tmp_path / "shd_test.h5.gz.part"
    part.symlink_to("/dev/full")
    size = len(files["shd_test.h5.gz"])
    with pytest.raises(fetch.DiskFullError, match=rf"shd_test\.h5\.gz: the disk holding "
                                                  rf"{tmp_path} is full \(No space left on "
                                                  rf"device\): the download needs {size:,} "):
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    part.unlink()  # space is freed
    assert_fetches_whole(server.url, raw, tmp_path)


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_concurrent_fetches_into_one_cache_each_end_with_the_complete_files(
        server, archives, tmp_path, how):
    _, raw = archives
    server.pause = 0.3  # every body takes a while: the three calls overlap
    if how == "threads":
        results = []
        calls = [threading.Thread(target=lambda: results.append(fetch.fetch(
            "shd", tmp_path, base_url=server.url, progress=False))) for _ in range(3)]
        for call in calls:
            call.start()
        for call in calls:
            call.join(60)
        assert results == [tmp_path] * 3
    else:
        code = (f"from spark_somas.data import fetch; "
                f"fetch.fetch('shd', {str(tmp_path)!r}, base_url={server.url!r}, progress=False)")
        calls = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        assert [(call.wait(60), call.stderr.read()) for call in calls] == [(0, "")] * 3
    assert_fetches_whole(server.url, raw, tmp_path)
    archives_asked = [n for n, _ in server.requests if n.endswith(".gz")]
    assert sorted(archives_asked) == ["shd_test.h5.gz", "shd_train.h5.gz"]  # each once


def test_a_file_system_without_locks_still_fetches(server, archives, tmp_path, monkeypatch):
    _, raw = archives

    def no_locks(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre without -o flock

    monkeypatch.setattr(fetch.fcntl, "flock", no_locks)
    assert_fetches_whole(server.url, raw, tmp_path)


@pytest.mark.parametrize("marker, newline, encoding", [
    ("*", "\n", "utf-8"), (" ", "\r\n", "utf-8"), (" ", "\n", "utf-8-sig"),
    ("*", "\r\n", "utf-8-sig")])
def test_checksum_lists_in_binary_style_with_a_bom_or_crlf_are_read(
        server, archives, tmp_path, marker, newline, encoding):
    files, raw = archives
    server.files[fetch.CHECKSUMS] = md5sums(files, marker, newline).encode(encoding)
    assert_fetches_whole(server.url, raw, tmp_path)


@pytest.mark.parametrize("encoding, byte, offset", [("utf-16", "0xff", 0), ("latin-1", "0xe9", -1)])
def test_a_checksum_list_that_is_not_utf8_is_refused_by_name(
        server, archives, tmp_path, encoding, byte, offset):
    files, _ = archives
    text = md5sums({**files, "donnée.h5.gz": b""})
    server.files[fetch.CHECKSUMS] = text.encode(encoding)
    at = offset if offset >= 0 else text.index("é")
    with pytest.raises(fetch.DownloadError, match=rf"/md5sums\.txt: byte {byte} at offset {at} "
                                                  r"violates the rule: a checksum list is UTF-8"):
        fetch.fetch("shd", tmp_path, base_url=server.url, progress=False)
    assert not list(tmp_path.iterdir())
