"""The Ray Serve internals mf/ uses, in one place: Serve's namespace, and the binds of HAProxy's
stats page and Prometheus exporter.

Ray Serve's HAProxy template (ray.serve._private.haproxy_templates, Ray 2.60) binds its HTTP
frontend to the host Serve was given, but its stats page (`bind *:<stats port>`) and its Prometheus
exporter (`bind :<metrics port>`) to every interface: `mf.serve --host 127.0.0.1` would still listen
on the machine's public addresses. `bind_to_host` rewrites those two lines to the frontend's host,
in every Ray worker of the serving job (a `worker_process_setup_hook`, which runs before the proxy
actor renders the template). tests/test_internals.py notices a release that changes the lines.
"""

from __future__ import annotations

from ray.serve._private.constants import SERVE_NAMESPACE  # noqa: F401 (the namespace Serve's own ray.init uses)

HOOK = "mf._ray_serve.bind_to_host"
"""`worker_process_setup_hook` for the Ray job that starts Serve (runtime_env of `ray.init`)."""

BINDS = {
    "bind *:{{ config.stats_port }}": "bind {{ config.frontend_host }}:{{ config.stats_port }}",
    "bind :{{ config.metrics_port }}": "bind {{ config.frontend_host }}:{{ config.metrics_port }}",
}
"""Each of Serve's lines, and what it becomes: the host of the HTTP frontend (`*` for 0.0.0.0)."""


def bind_to_host() -> None:
    """Rewrite the template HAProxy's config is rendered from (a module global, read at each render)."""
    from ray.serve._private import haproxy

    template = haproxy.HAPROXY_CONFIG_TEMPLATE
    for line, bound in BINDS.items():
        template = template.replace(line, bound)
    haproxy.HAPROXY_CONFIG_TEMPLATE = template
