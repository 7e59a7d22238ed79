"""spark_somas.fetch against a local HTTP server (127.0.0.1, started here,
shut down by the fixture or after 120 s at the latest): generated SHD/SSC
files in the official layout, gzipped, with their md5sums.txt. Downloads
resume with Range requests, a corrupt file is refused by name and deleted,
cached files are not fetched again, and the CLI's ``train --download``
trains on what it fetched. Nothing here reaches the network."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading

import numpy as np
import pytest

from spark_somas import cli, events, fetch
from test_events import make_samples, write_events_file


class Server:
    """Serves ``files`` (name -> bytes) with Range support; records requests.

    ``drop_after[name] = k``: the next response for ``name`` sends k bytes of
    its body and closes the connection (an interrupted download).
    ``ignore_range``: answer every request with the whole file (200).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files, self.drop_after, self.ignore_range, self.requests = dict(files), {}, False, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                name = self.path.removeprefix("/datasets/")
                owner.requests.append((name, self.headers.get("Range")))
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
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
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


@pytest.fixture
def server(archives):
    files, _ = archives
    sums = "".join(f"{hashlib.md5(b).hexdigest()}  {n}\n" for n, b in files.items())
    srv = Server({**files, fetch.CHECKSUMS: sums.encode()})
    yield srv
    srv.close()


def test_fetch_downloads_checks_and_unpacks(server, archives, tmp_path):
    _, raw = archives
    directory = fetch.fetch("shd", tmp_path / "cache", base_url=server.url, progress=False)
    assert directory == tmp_path / "cache"
    assert sorted(p.name for p in directory.iterdir()) == ["shd_test.h5", "shd_train.h5"]
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
        "ssc_test.h5", "ssc_train.h5", "ssc_valid.h5"]
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
                     "--steps", "8", "--batch-size", "10", "--out", str(out),
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
