"""The downloader against a real loopback HTTP server serving GroupLens' ml-latest-small.zip; no internet.

ml-latest-small also ships inside the package (mf/data/bundled/): the download tests take that copy
away (`no_bundle`) to exercise the download path with the real archive; the bundle tests run with
the network provably unreachable.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mf.config import TrainConfig
from mf.data import DATASETS, RemoteDataset, data_home, fetch, load_movielens
from mf.data.download import BUNDLED
from mf.errors import DataError

# The loopback server serves the package's own copy of GroupLens' zip (the same bytes as
# ../shared/data/ml-latest-small.zip), so that these tests need nothing outside the checkout.
BUNDLE_DIR = Path(__file__).resolve().parents[1] / "mf" / "data" / "bundled"
ZIP = BUNDLE_DIR / "ml-latest-small.zip"
ML_LATEST_SMALL_SHA256 = "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:0 in a thread, recording every path requested."""

    def __init__(self, handler: type[SimpleHTTPRequestHandler]) -> None:
        self.requests: list[str] = []
        server = self

        class Recording(handler):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep pytest output clean

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Recording, directory=str(BUNDLE_DIR))
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class _Truncating(SimpleHTTPRequestHandler):
    """Announces the full length, sends half the bytes, then closes the connection."""

    def do_GET(self) -> None:
        body = ZIP.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    s = _Server(SimpleHTTPRequestHandler)
    monkeypatch.setenv("MF_TUNE_DATA_URL", s.url)
    yield s
    s.close()


@pytest.fixture
def truncating_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    s = _Server(_Truncating)
    monkeypatch.setenv("MF_TUNE_DATA_URL", s.url + "/")  # a trailing slash is tolerated
    yield s
    s.close()


@pytest.fixture
def no_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the package's own ml-latest-small away, so that fetching it downloads."""
    monkeypatch.delitem(BUNDLED, "ml-latest-small")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> str:
    """MF_TUNE_DATA_URL on a loopback port that nothing listens on: any download is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MF_TUNE_DATA_URL", url)
    return url


def _files(folder: Path) -> list[Path]:
    return list(folder.rglob("*")) if folder.exists() else []


def test_load_movielens_downloads_verifies_unpacks_once(
    server: _Server,
    no_bundle: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MF_TUNE_DATA", str(tmp_path / "cache"))
    ratings = load_movielens("ml-latest-small")
    # Downloaded from the base URL, with a one-line notice, and read like the real set.
    assert server.requests == ["/ml-latest-small.zip"]
    assert "downloading" in capsys.readouterr().err
    assert len(ratings.frame) == 100_836 and ratings.titles is not None
    # Unpacked to <cache>/<name>/ without the zip's top folder; the verified zip is kept; no temp files.
    assert (tmp_path / "cache" / "ml-latest-small" / "ratings.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "ml-latest-small",
        "ml-latest-small.zip",
    ]

    again = load_movielens("ml-latest-small")
    # The second call reads the cache and makes no request.
    assert server.requests == ["/ml-latest-small.zip"]
    assert again.frame.equals(ratings.frame)


def test_fetch_supports_md5_checksums(
    server: _Server, no_bundle: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md5 = hashlib.md5(ZIP.read_bytes()).hexdigest()
    monkeypatch.setitem(DATASETS, "ml-latest-small", RemoteDataset("unused", f"md5:{md5}", "ml-latest-small"))
    # An md5 digest (as published for ml-10m) verifies as well as sha256.
    assert (fetch("ml-latest-small", cache_dir=tmp_path) / "movies.csv").is_file()


def test_fetch_rejects_wrong_checksum_and_leaves_nothing(
    server: _Server, no_bundle: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = RemoteDataset("unused", "sha256:" + "0" * 64, "ml-latest-small")
    monkeypatch.setitem(DATASETS, "ml-latest-small", wrong)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        load_movielens("ml-latest-small", cache_dir=cache)
    message = str(info.value)
    # The message names the URL, both digests, and is one line.
    assert f"{server.url}/ml-latest-small.zip" in message
    assert "sha256:696d65a3" in message and "sha256:0000" in message and "\n" not in message
    # No partial zip or folder remains in the cache.
    assert _files(cache) == []


def test_fetch_rejects_truncated_download_and_leaves_nothing(
    truncating_server: _Server, no_bundle: None, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="truncated") as info:
        fetch("ml-latest-small", cache_dir=cache)
    # The URL is named; the half file is gone.
    assert "ml-latest-small.zip" in str(info.value)
    assert _files(cache) == []


def test_fetch_rejects_missing_file_on_server(server: _Server, tmp_path: Path) -> None:
    # The loopback server has no ml-100k.zip: a 404 becomes a DataError naming the URL.
    with pytest.raises(DataError, match=r"ml-100k\.zip.*404"):
        fetch("ml-100k", cache_dir=tmp_path / "cache")
    assert _files(tmp_path / "cache") == []


def test_fetch_rejects_unknown_name(tmp_path: Path) -> None:
    # Only names in DATASETS can be fetched; the message lists them.
    with pytest.raises(DataError, match="ml-latest-small"):
        fetch("ml-5k", cache_dir=tmp_path)


def test_data_home_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MF_TUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # Default: $XDG_CACHE_HOME/mf-tune; MF_TUNE_DATA overrides it; an argument overrides both.
    assert data_home() == tmp_path / "xdg" / "mf-tune"
    monkeypatch.setenv("MF_TUNE_DATA", str(tmp_path / "env"))
    assert data_home() == tmp_path / "env"
    assert data_home(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MF_TUNE_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_home() == Path.home() / ".cache" / "mf-tune"


def test_datasets_registry_is_complete_and_well_formed() -> None:
    # The required sets are there, each with a GroupLens URL and an algorithm-tagged digest.
    assert {"ml-latest-small", "ml-100k", "ml-1m", "ml-25m"} <= set(DATASETS)
    for name, info in DATASETS.items():
        assert info.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        algorithm, digest = info.checksum.split(":")
        assert len(digest) == {"sha256": 64, "md5": 32}[algorithm]
    # The copy of ml-latest-small that the server serves matches its registered checksum.
    expected = DATASETS["ml-latest-small"].checksum
    assert expected == "sha256:" + hashlib.sha256(ZIP.read_bytes()).hexdigest()


def test_bundled_ml_latest_small_loads_with_no_network_and_an_empty_cache(
    no_network: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    # The network is really unreachable: a set that is not bundled cannot be fetched.
    with pytest.raises(DataError, match=r"ml-100k\.zip: download failed .*refused"):
        fetch("ml-100k", cache_dir=cache)
    # TrainConfig's default data set, and so `--data ml-latest-small` or no --data, still loads.
    assert TrainConfig().data == "ml-latest-small"
    ratings = load_movielens(TrainConfig().data, cache_dir=cache)
    assert len(ratings.frame) == 100_836 and ratings.frame["user"].nunique() == 610
    assert ratings.titles is not None and len(ratings.titles) == 9_742
    # Unpacked into the cache as a download would be (no zip copied there, no temporary left).
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small"]
    assert (cache / "ml-latest-small" / "ratings.csv").is_file()
    # The same bytes as GroupLens' ratings.csv.
    digest = hashlib.sha256((cache / "ml-latest-small" / "ratings.csv").read_bytes()).hexdigest()
    assert digest == "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"


def test_bundled_copy_is_grouplens_zip_with_its_licence() -> None:
    bundled = Path(str(BUNDLED["ml-latest-small"]))
    # From the source tree the resource is the file under mf/data/bundled/, unchanged: the size
    # and sha256 GroupLens publish, and the checksum that a download is held to.
    assert bundled == BUNDLE_DIR / "ml-latest-small.zip"
    data = bundled.read_bytes()
    assert len(data) == 978_202 and hashlib.sha256(data).hexdigest() == ML_LATEST_SMALL_SHA256
    assert DATASETS["ml-latest-small"].checksum == f"sha256:{ML_LATEST_SMALL_SHA256}"
    # Its README (GroupLens' terms) ships beside it, the same as the one inside the zip, and says
    # that redistribution is allowed under the same terms and whom to cite.
    readme = (BUNDLE_DIR / "README.txt").read_bytes()
    with zipfile.ZipFile(bundled) as zf:
        assert zf.read("ml-latest-small/README.txt") == readme
    text = readme.decode()
    assert "may redistribute the data set" in text and "Harper and Joseph A. Konstan. 2015" in text
    assert "Harper and Joseph A. Konstan" in (BUNDLE_DIR / "NOTICE.txt").read_text()


def test_damaged_bundled_copy_is_refused_and_leaves_nothing(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = tmp_path / "ml-latest-small.zip"
    data = bytearray(ZIP.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of ratings.csv's deflated data
    damaged.write_bytes(bytes(data))
    monkeypatch.setitem(BUNDLED, "ml-latest-small", damaged)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        load_movielens("ml-latest-small", cache_dir=cache)
    message = str(info.value)
    # One line naming the bundled file, its digest and the expected one, and the fix.
    assert str(damaged) in message and f"expected sha256:{ML_LATEST_SMALL_SHA256}" in message
    assert "reinstall" in message and "\n" not in message
    # Nothing unpacked, and no silent fall-back to a download.
    assert _files(cache) == [] and server.requests == []


def test_bundled_copy_that_cannot_unpack_leaves_nothing(
    no_network: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cut-short zip whose own checksum is registered passes the check but fails to unpack.
    cut = tmp_path / "cut.zip"
    cut.write_bytes(ZIP.read_bytes()[:500_000])
    checksum = "sha256:" + hashlib.sha256(cut.read_bytes()).hexdigest()
    monkeypatch.setitem(BUNDLED, "ml-latest-small", cut)
    monkeypatch.setitem(DATASETS, "ml-latest-small", RemoteDataset("unused", checksum, "ml-latest-small"))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="cannot unpack"):
        fetch("ml-latest-small", cache_dir=cache)
    # The temporary unpack folder is gone: no half-unpacked set that a later call would trust.
    assert _files(cache) == []
