"""
The front's sections, [workers] and [balancer]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import ConfigError
from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class WorkersSettings:
    """[workers]: the worker processes that serve the web application."""

    count: int = dataclasses.field(
        default=0, metadata=_doc("Worker processes to run; 0 means one per CPU.")
    )
    max_requests: int = dataclasses.field(
        default=0, metadata=_doc("Replace a worker after this many requests; 0 never.")
    )
    max_requests_jitter: int = dataclasses.field(
        default=0,
        metadata=_doc("Add up to this many (random) to max_requests, so workers recycle apart."),
    )
    min_lifetime: float = dataclasses.field(
        default=60.0,
        metadata=_doc("Seconds a worker lives at least before max_requests recycles it."),
    )
    start_timeout: float = dataclasses.field(
        default=60.0, metadata=_doc("Seconds a new worker has to report ready.")
    )
    drain_timeout: float = dataclasses.field(
        default=30.0,
        metadata=_doc("Seconds a stopping worker has to finish its requests before SIGTERM."),
    )
    kill_timeout: float = dataclasses.field(
        default=10.0, metadata=_doc("Seconds after SIGTERM before SIGKILL.")
    )
    respawn_delay_max: float = dataclasses.field(
        default=60.0,
        metadata=_doc("Longest wait before respawning a worker that keeps dying at start."),
    )
    socket_dir: str = dataclasses.field(
        default="",
        metadata=_doc("Directory for the workers' unix sockets. Default: <data_dir>/workers."),
    )
    app: str = dataclasses.field(
        default="",
        metadata=_doc(
            "module:function building the twisted.web Site the workers serve, for tests "
            "and benchmarks. Default: the Clickpass web application."
        ),
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line for the first problem in this section."""
        if self.count < 0:
            raise ConfigError("[workers] count: must be 0 (one per CPU) or more")
        if self.app and ":" not in self.app:
            raise ConfigError("[workers] app: must be module:function")


@dataclasses.dataclass(frozen=True)
class BalancerSettings:
    """[balancer]: the front's reverse proxy to the workers."""

    max_in_flight: int = dataclasses.field(
        default=32, metadata=_doc("Most requests in flight at one worker; more wait in the queue.")
    )
    queue_size: int = dataclasses.field(
        default=1024, metadata=_doc("Most requests waiting for a free worker; more get a 503.")
    )
    queue_timeout: float = dataclasses.field(
        default=10.0, metadata=_doc("Seconds a request waits for a worker before a 503.")
    )
    request_timeout: float = dataclasses.field(
        default=30.0,
        metadata=_doc(
            "Seconds a worker has to start answering a request, counted once the whole "
            "request is read; then a 504 and the worker is replaced."
        ),
    )
    max_body: int = dataclasses.field(
        default=1024 * 1024, metadata=_doc("Largest request body in bytes; above it a 413.")
    )
    max_header_bytes: int = dataclasses.field(
        default=32 * 1024, metadata=_doc("Largest request head in bytes; above it a 431.")
    )
    header_timeout: float = dataclasses.field(
        default=10.0, metadata=_doc("Seconds a client has to send a request's headers.")
    )
    body_timeout: float = dataclasses.field(
        default=30.0,
        metadata=_doc(
            "Seconds a client has to send a request's body once its headers are in; then a 408. "
            "The front reads the whole body before the request goes to a worker."
        ),
    )
    idle_timeout: float = dataclasses.field(
        default=60.0, metadata=_doc("Seconds an idle keep-alive client connection stays open.")
    )
    connect_timeout: float = dataclasses.field(
        default=2.0, metadata=_doc("Seconds to connect to a worker's socket.")
    )
    retries: int = dataclasses.field(
        default=2, metadata=_doc("Times a request that never reached a worker is tried elsewhere.")
    )
    eject_seconds: float = dataclasses.field(
        default=5.0,
        metadata=_doc("Seconds a worker that refused or reset a connection gets no traffic."),
    )
    health_interval: float = dataclasses.field(
        default=5.0, metadata=_doc("Seconds between active health checks; 0 turns them off.")
    )
    health_timeout: float = dataclasses.field(
        default=2.0, metadata=_doc("Seconds a health check may take.")
    )
    health_fall: int = dataclasses.field(
        default=3, metadata=_doc("Failed health checks in a row before a worker is replaced.")
    )
    health_path: str = dataclasses.field(
        default="/healthz", metadata=_doc("Path the health checks GET.")
    )
    sweep_interval: float = dataclasses.field(
        default=0.5, metadata=_doc("Seconds between checks for timed-out requests.")
    )
    static: bool = dataclasses.field(
        default=True, metadata=_doc("Serve /static/ files from the front.")
    )
    static_max_age: int = dataclasses.field(
        default=3600, metadata=_doc("Cache-Control max-age of static files, in seconds.")
    )
    redirect_http_to_https: bool = dataclasses.field(
        default=False,
        metadata=_doc("Answer requests on tcp: listeners with a redirect to the https public_url."),
    )
    metrics_listen: str = dataclasses.field(
        default="",
        metadata=_doc(
            "Endpoint string for a separate /metrics listener, e.g. "
            "tcp:9102:interface=127.0.0.1 (loopback, or a network only monitoring reaches); it "
            "serves /metrics without a token and answers 404 to anything else."
        ),
    )

    def check(self) -> None:
        """Raise L{ConfigError} with one line for the first problem in this section."""
        for key in ("max_in_flight", "queue_size", "max_body", "max_header_bytes", "health_fall"):
            if getattr(self, key) < 1:
                raise ConfigError(f"[balancer] {key}: must be at least 1")
        for key in (
            "queue_timeout",
            "request_timeout",
            "header_timeout",
            "body_timeout",
            "connect_timeout",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(f"[balancer] {key}: must be more than 0 seconds")
        if not self.health_path.startswith("/"):
            raise ConfigError("[balancer] health_path: must start with /")


__all__ = ["BalancerSettings", "WorkersSettings"]
