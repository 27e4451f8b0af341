"""`mf.serve` for real: Ray Serve on a loopback port, real HTTP requests, the real ml-latest-small.

Serve starts once for the module. A Ray that is already initialised in this process is used and
left running; otherwise the module starts a local one (never joining another agent's `ray start`)
and shuts it down at the end. Serve itself is shut down only if this module started it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mf import recommend
from mf import train as mf_train
from mf.errors import MFError
from mf.serving import MAX_PAIRS, Recommender
from mf.training import load_model
from tests.files import ml_latest_small

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
mf_serve = pytest.importorskip("mf.serve")

REPO = Path(__file__).resolve().parents[1]
DATA = ml_latest_small()
USERS = [1, 2, 42, 300, 610]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """Plain HTTP/1.1 over one connection per call: what curl would send."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", path)

    def post(self, path: str, payload: Any) -> tuple[int, Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.call("POST", path, body, {"content-type": "application/json"})


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A folder laid out like <experiment>/best/, trained in seconds (3 epochs of the tutorial config)."""
    out = tmp_path_factory.mktemp("best")
    assert mf_train.main(["--data", str(DATA), "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def recommender(export: Path) -> Recommender:
    """The model side in-process; loading it chooses the ranking once and writes ranking.json."""
    return Recommender.from_export(export)


@pytest.fixture(scope="module")
def server(export: Path, recommender: Recommender) -> Iterator[Client]:
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    if mf_serve.serve_running():
        if started_ray:
            ray.shutdown()
        pytest.skip("Serve already runs in this process's Ray: its proxy port is not this test's to choose")
    port = free_port()
    # num_cpus=0: the replica must start even where an earlier test's actors hold the CPUs
    started_serve = mf_serve.start(str(export), port=port, num_cpus=0, name="mf-test")
    try:
        yield Client(port)
    finally:
        mf_serve.stop("mf-test", started_serve=started_serve)
        if started_ray:
            ray.shutdown()


def cli_recommendations(export: Path, user: int, k: int, capsys) -> list[dict[str, Any]]:
    assert recommend.main(["--model", str(export), "--user", str(user), "-k", str(k), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_recommend_route_equals_mf_recommend_json(server: Client, export: Path, capsys):
    for user in USERS:
        for k in (10, 3):
            status, body = server.get(f"/recommend/{user}?k={k}")
            # The same movies, in the same order and the same JSON shape, as the CLI prints.
            assert status == 200
            assert body == cli_recommendations(export, user, k, capsys)
    # k defaults to 10, like the CLI's -k.
    assert server.get("/recommend/1")[1] == cli_recommendations(export, 1, 10, capsys)


def test_recommend_route_leaves_out_every_movie_the_user_rated_or_with_exclude_trained_those_trained_on(
    server: Client, recommender: Recommender
):
    d = recommender.dataset
    for user in USERS:
        u = d.user_index(user)
        trained = set(d.item_ids[d.train.items[d.train.users == u]].tolist())
        rated = trained | set(d.item_ids[d.val.items[d.val.users == u]].tolist())
        for query, never in (("", rated), ("&exclude=trained", trained)):
            status, body = server.get(f"/recommend/{user}?k=200{query}")
            # None of the movies the user rated at all, or with exclude=trained in the part the model
            # trained on (train: this export holds out the tutorial's validation part).
            assert status == 200 and len(body) == 200
            assert not {r["movieId"] for r in body} & never
    assert server.get("/recommend/1?exclude=all")[0] == 422


def test_predict_route_equals_the_models_own_predictions(server: Client, export: Path, recommender):
    d = recommender.dataset
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, d.n_users, 300), rng.integers(0, d.n_items, 300)
    pairs = [
        {"user": int(d.user_ids[u]), "movie": int(d.item_ids[i])} for u, i in zip(users, items, strict=True)
    ]
    status, body = server.post("/predict", pairs)
    model, _ = load_model(export / "model.pt")
    with torch.no_grad():
        expected = model(torch.tensor(users), torch.tensor(items)).numpy()
    # One prediction per pair, in order, echoing the raw ids; the values are the torch model's.
    assert status == 200 and len(body) == len(pairs)
    assert [{"user": b["user"], "movie": b["movie"]} for b in body] == pairs
    np.testing.assert_allclose([b["predicted_rating"] for b in body], expected, rtol=1e-5, atol=1e-5)
    # An empty list is an empty answer.
    assert server.post("/predict", []) == (200, [])


def test_health_names_the_model_its_data_and_the_ranking_served(server: Client, export: Path, recommender):
    status, body = server.get("/health")
    metrics = json.loads((export / "metrics.json").read_text())
    ranking = json.loads((export / "ranking.json").read_text())
    assert status == 200 and body["status"] == "ok"
    # The export's own figures and data: mf.train's export has no trial id, so it is null.
    assert body["trial_id"] is None and body["val_mse"] == metrics["val_mse"] and body["test_mse"] is None
    assert body["users"] == 610 and body["items"] == 9724 and "ml-latest-small" in body["data"]
    # Named, without the server's paths.
    assert body["model"] == f"{export.name}/model.pt" and "/" not in body["data"]
    # The ranking served is the export's choice, with the figures it was chosen on.
    assert body["ranking"]["name"] == ranking["ranking"] and body["ranking"]["chosen"] is True
    assert body["ranking"]["val_ndcg@10"] == ranking["candidates"][ranking["ranking"]]
    assert body["ranking"]["popular_val_ndcg@10"] == ranking["val"]["popular"]["ndcg"]


BAD_REQUESTS = [
    # (method, path, body, status, field, words in the reason)
    ("GET", "/recommend/999999", None, 404, "user_id", "999999"),
    ("GET", "/recommend/abc", None, 422, "user_id", "abc"),
    (
        "GET",
        "/recommend/123456789012345678901234567890",
        None,
        404,
        "user_id",
        "123456789012345678901234567890",
    ),
    ("GET", "/recommend/1?k=0", None, 422, "k", "1 to 9724"),
    ("GET", "/recommend/1?k=9725", None, 422, "k", "9725"),
    ("GET", "/recommend/1?k=ten", None, 422, "k", "ten"),
    ("GET", "/recommend/1?fallback=random", None, 422, "fallback", "random"),
    ("POST", "/predict", b"[{not json", 400, "body", "not valid JSON"),
    ("POST", "/predict", b'{"user": 1, "movie": 1}', 422, "body", "an object"),
    ("POST", "/predict", b'[{"user": 1, "movie": 99999999}]', 422, "[0].movie", "99999999"),
    (
        "POST",
        "/predict",
        b'[{"user": 1, "movie": 1}, {"user": 999999, "movie": 1}]',
        422,
        "[1].user",
        "999999",
    ),
    ("POST", "/predict", b'[{"user": "1", "movie": 1}]', 422, "[0].user", "not an integer"),
    ("POST", "/predict", b'[{"user": 1.5, "movie": 1}]', 422, "[0].user", "1.5"),
    (
        "POST",
        "/predict",
        b'[{"user": 1, "movie": 123456789012345678901234567890}]',
        422,
        "[0].movie",
        "out of range",
    ),
    ("POST", "/predict", b'[{"user": 1}]', 422, "[0].movie", "missing"),
    ("POST", "/predict", b'[{"user": 1, "item": 1, "movie": 1}]', 422, "[0]", "item"),
    ("POST", "/predict", b"[7]", 422, "[0]", "expected"),
    (
        "POST",
        "/predict",
        json.dumps([{"user": 1, "movie": 1}] * (MAX_PAIRS + 1)).encode(),
        413,
        "body",
        "pairs",
    ),
    ("POST", "/predict", b" " * (2 << 20), 413, "body", "bytes"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field", "words"), BAD_REQUESTS)
def test_bad_request_gets_its_4xx_naming_the_field_and_the_server_keeps_answering(
    server: Client, method: str, path: str, body: bytes | None, status: int, field: str, words: str
):
    headers = {"content-type": "application/json"} if body is not None else {}
    got, answer = server.call(method, path, body, headers)
    # The status, and a one-line reason that names the field and what was wrong.
    assert got == status
    assert answer["field"] == field and field in answer["detail"] and words in answer["detail"]
    assert "\n" not in answer["detail"]
    # The replica is still up and right afterwards.
    ok, recs = server.get("/recommend/1?k=3")
    assert ok == 200 and len(recs) == 3


def test_unknown_user_with_fallback_popular_gets_the_most_popular_movies(server: Client, recommender):
    status, body = server.get("/recommend/999999?k=5&fallback=popular")
    counts = np.bincount(recommender.dataset.train.items, minlength=recommender.dataset.n_items)
    top5 = recommender.dataset.item_ids[np.argsort(-counts, kind="stable")[:5]]
    # The five most rated movies in train, with no predicted rating (the model never saw the user).
    assert status == 200
    assert [r["movieId"] for r in body] == top5.tolist()
    assert [r["rank"] for r in body] == [1, 2, 3, 4, 5] and all(r["predicted_rating"] is None for r in body)
    # A known user is served as usual, fallback or not.
    assert server.get("/recommend/1?k=5&fallback=popular") == server.get("/recommend/1?k=5")


def test_concurrent_requests_all_get_their_own_right_answer(server: Client, recommender):
    d = recommender.dataset
    rng = np.random.default_rng(7)
    jobs: list[tuple[str, Any, Any]] = []
    for n in range(96):
        if n % 2:
            user = int(d.user_ids[rng.integers(d.n_users)])
            expected = [r.as_dict() for r in recommender.recommend(user, 10)]
            jobs.append(("GET", f"/recommend/{user}?k=10", expected))
        else:
            pairs = [
                {"user": int(d.user_ids[u]), "movie": int(d.item_ids[i])}
                for u, i in zip(rng.integers(0, d.n_users, 20), rng.integers(0, d.n_items, 20), strict=True)
            ]
            jobs.append(("POST", pairs, [p["predicted_rating"] for p in recommender.predict(_raw(pairs))]))

    def send(job: tuple[str, Any, Any]) -> bool:
        kind, what, expected = job
        if kind == "GET":
            status, body = server.get(what)
            return status == 200 and body == expected
        status, body = server.post("/predict", what)
        got = [b["predicted_rating"] for b in body]
        return status == 200 and np.allclose(got, expected, rtol=1e-6)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, jobs))
    # 16 at a time, /predict batched across requests: each one still gets its own answer.
    assert all(results), f"{results.count(False)} of {len(results)} wrong"


def _raw(pairs: list[dict[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([p["user"] for p in pairs]), np.array([p["movie"] for p in pairs])


@contextlib.contextmanager
def cli_server(export: Path, port: int, *flags: str) -> Iterator[subprocess.Popen]:
    """`python -m mf.serve` in a process of its own, on its own local Ray (never another one on this
    machine), from the moment it says it serves; killed at the end if still running, and after 180 s
    at most, so that a hung server fails the test instead of hanging it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mf.serve", "--model", str(export), "--port", str(port), "--num-cpus", "0"]
        + list(flags),
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": "local"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    try:
        # It prints "serving http://..." once the app is deployed (stdout is line-buffered text).
        for line in proc.stdout:
            if line.startswith("serving http://"):
                break
        else:
            pytest.fail(f"mf.serve ended before serving (exit {proc.wait()})")
        yield proc
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()


def test_cli_with_the_python_proxy_serves_what_mf_recommend_prints_and_stops_on_sigint(export: Path, capsys):
    port = free_port()
    client = Client(port)
    # Serve's Python proxy here: the module's server above runs the default, HAProxy
    with cli_server(export, port, "--ingress", "proxy") as proc:
        # The acceptance line: curl '.../recommend/1?k=10' gives the ten movies mf.recommend prints.
        assert client.get("/recommend/1?k=10") == (200, cli_recommendations(export, 1, 10, capsys))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    # Ctrl-C: exit 0 after shutting Serve down, and nothing listens on the port any more.
    assert proc.returncode == 0, out
    assert "stopped" in out
    with pytest.raises(OSError):
        client.get("/health")


def test_cli_bad_export_is_one_line_before_ray_starts(tmp_path: Path, capsys):
    # exit 2 and one line saying there is no checkpoint, no traceback; Ray is never reached.
    assert mf_serve.main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint there" in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("replicas", "two", "an integer >= 1"),
        ("num_cpus", "-1", "a number >= 0"),
        ("max_ongoing_requests", "0", "an integer >= 1"),
    ],
)
def test_serve_run_args_that_are_not_numbers_are_one_error_naming_them(key: str, value: str, expected: str):
    # `serve run mf.serve:build_app model=... replicas=two` gets what it must write instead.
    with pytest.raises(MFError, match=f"serve args: {key}='{value}': expected {expected}"):
        mf_serve.build_app({"model": "runs/mf-tune/best", key: value})


def descendants(root: int) -> list[int]:
    """`root` and every process below it (from each process's parent in /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def listening(pid: int) -> list[tuple[str, int]]:
    """The (address, port) of each TCP socket `pid` listens on, read from /proc like `ss -ltnp`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                address, port = cols[1].split(":")
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word of the address in the host's (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(
                    (
                        socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words),
                        int(port, 16),
                    )
                )
    return found


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def speaks_grpc(port: int) -> bool:
    """Whether the server on `port` is a gRPC one (HTTP/2): it answers a new connection with its
    SETTINGS frame (9-byte header, type 4), where an HTTP/1 server answers our request line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        head = s.recv(9)
    return len(head) == 9 and head[3] == 0x04


def test_every_http_socket_of_the_server_listens_on_the_given_host_only(export: Path):
    port = free_port()
    with cli_server(export, port, "--host", "127.0.0.1") as proc:
        # The processes that serve HTTP: HAProxy, Serve's proxy actor and the replicas.
        servers = {
            pid: title(pid)
            for pid in descendants(proc.pid)
            if title(pid).startswith(("ray::ProxyActor", "ray::ServeReplica")) or "haproxy" in title(pid)
        }
        sockets = {(pid, name): listening(pid) for pid, name in servers.items()}
        beyond = {key: [a for a in found if a[0] != "127.0.0.1"] for key, found in sockets.items()}
        # Each Ray worker also runs Ray's own RPC server (gRPC, token-authenticated) on every
        # interface: Ray's, not the app's, and Ray 2.60 has no setting to bind it to one address.
        http_beyond = {key: [a for a in found if not speaks_grpc(a[1])] for key, found in beyond.items()}
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    everything = [address for found in sockets.values() for address in found]
    assert ("127.0.0.1", port) in everything
    # HAProxy (its frontend, stats page and exporter), Serve's proxy and the replicas' HTTP servers:
    # on the given host, none beyond it.
    haproxy = [address for (_, name), found in sockets.items() if "haproxy" in name for address in found]
    assert len(haproxy) >= 2 and {host for host, _ in haproxy} == {"127.0.0.1"}, haproxy
    assert {key: found for key, found in http_beyond.items() if found} == {}
