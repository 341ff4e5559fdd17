"""Test helpers for boto3 code: a real S3-compatible server (moto in server mode) on 127.0.0.1, and a
fault-injecting HTTP proxy in front of it.

No AWS account and no network: every client is built with ``endpoint_url`` pointing here, with dummy
credentials from :func:`aws_test_env`.
"""
from __future__ import annotations

import http.client
import logging
import random
import socket
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import boto3
import botocore.config

REGION = "us-east-1"


def aws_test_env() -> dict[str, str]:
    """Environment for boto3 in tests: dummy credentials, no ~/.aws files, no instance-metadata lookups,
    and no HTTP proxy for loopback addresses."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def start_moto():
    """Start a moto S3 server on 127.0.0.1 on a free port. Returns ``(server, endpoint_url)``; stop it with
    :func:`stop_moto`."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def stop_moto(server) -> None:
    """Stop a server from :func:`start_moto` and release its port."""
    server.stop()
    if getattr(server, "_server", None) is not None:  # stop() leaves the listening socket open
        server._server.server_close()


def reset_moto(endpoint_url: str) -> None:
    """Forget every bucket and object on the moto server."""
    connection = http.client.HTTPConnection(urlsplit(endpoint_url).netloc, timeout=10)
    try:
        connection.request("POST", "/moto-api/reset")
        connection.getresponse().read()
    finally:
        connection.close()


def test_s3_cfg(endpoint_url: str, **overrides) -> dict:
    """An ``s3`` config section for tests: short backoff and timeouts."""
    cfg = {"endpoint_url": endpoint_url, "region": REGION, "max_attempts": 6, "backoff_seconds": 0.01,
           "connect_timeout": 2, "read_timeout": 5}
    cfg.update(overrides)
    return cfg


test_s3_cfg.__test__ = False  # not a test, despite its name


def direct_client(endpoint_url: str):
    """A plain boto3 S3 client for setting up fixtures (botocore's default retries)."""
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=REGION,
        config=botocore.config.Config(max_pool_connections=16, retries={"mode": "standard", "max_attempts": 3}))


def put_objects(client, bucket: str, objects: Mapping[str, bytes], *, threads: int = 8) -> None:
    """Upload ``{key: bytes}`` to ``bucket`` in a thread pool (boto3 clients are thread-safe)."""
    def put(item):
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, objects.items()))


# --------------------------------------------------------------------------------------------- FaultProxy

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "expect", "content-length"}
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
}
FAULT_KINDS = ("slowdown", "internal_error", "drop_before_response", "drop_mid_body", "stall")


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client hung up (after a timeout or a dropped response): expected here
        super().handle_error(request, client_address)


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of an S3 endpoint that breaks some object GETs.

    For each ``GET /bucket/key`` (path-style object read) it decides, deterministically from
    ``(seed, bucket, key, attempt number of that key)`` and so independently of thread timing, to:

    * answer 503 ``SlowDown`` or 500 ``InternalError`` S3 error XML (probability ``fail_rate``, half each),
    * drop the connection, either before any response or after half of the body (``drop_rate``, half each),
    * or forward it unharmed.

    Keys in ``always_fail_keys`` always get 503 SlowDown. For keys in ``stall_keys`` the proxy says nothing for
    ``stall_seconds`` and then drops the connection (a read timeout for a client with a shorter one).
    ``max_faults_per_key`` (None: no limit) caps the faults injected for any other key, so a test can rely on
    every object succeeding within its attempts.
    Listing, HEAD, PUT and the rest are forwarded unharmed.

    Counters (read them after the requests): ``injected`` (Counter by fault kind), ``get_attempts`` (Counter by
    ``"bucket/key"``), ``forwarded`` (Counter by HTTP method). Use as a context manager or call :meth:`close`;
    handler threads are daemons and their sockets time out after ``timeout`` seconds.
    """

    def __init__(self, upstream_endpoint: str, *, fail_rate: float = 0.3, drop_rate: float = 0.1, seed: int = 0,
                 always_fail_keys: Iterable[str] = (), max_faults_per_key: int | None = None,
                 stall_keys: Iterable[str] = (), stall_seconds: float = 1.0, timeout: float = 10.0):
        if not 0 <= fail_rate <= 1 or not 0 <= drop_rate <= 1 or fail_rate + drop_rate > 1:
            raise ValueError(f"fail_rate and drop_rate must be in [0, 1] with sum <= 1, got {fail_rate!r}, "
                             f"{drop_rate!r}")
        upstream = urlsplit(upstream_endpoint)
        if upstream.scheme != "http" or not upstream.hostname or not upstream.port:
            raise ValueError(f"upstream_endpoint must be http://host:port, got {upstream_endpoint!r}")
        self.upstream = (upstream.hostname, upstream.port)
        self.fail_rate = fail_rate
        self.drop_rate = drop_rate
        self.seed = seed
        self.always_fail_keys = frozenset(always_fail_keys)
        self.stall_keys = frozenset(stall_keys)
        self.stall_seconds = stall_seconds
        self.max_faults_per_key = max_faults_per_key
        self.timeout = timeout
        self.injected: Counter = Counter()
        self.get_attempts: Counter = Counter()
        self.forwarded: Counter = Counter()
        self._faults_per_key: Counter = Counter()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server = _ProxyServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="FaultProxy", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def faults_injected(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def attempts(self, bucket: str, key: str) -> int:
        """How many GET requests reached the proxy for this object."""
        with self._lock:
            return self.get_attempts[f"{bucket}/{key}"]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # end keep-alive handlers now rather than at their socket timeout
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _decide(self, bucket: str, key: str) -> str | None:
        name = f"{bucket}/{key}"
        with self._lock:
            self.get_attempts[name] += 1
            attempt = self.get_attempts[name]
            if key in self.always_fail_keys:
                fault = "slowdown"
            elif key in self.stall_keys:
                fault = "stall"
            elif self.max_faults_per_key is not None and self._faults_per_key[name] >= self.max_faults_per_key:
                fault = None
            else:
                draw = random.Random(f"{self.seed}:{name}:{attempt}")
                roll = draw.random()
                if roll < self.fail_rate:
                    fault = "slowdown" if draw.random() < 0.5 else "internal_error"
                elif roll < self.fail_rate + self.drop_rate:
                    fault = "drop_before_response" if draw.random() < 0.5 else "drop_mid_body"
                else:
                    fault = None
            if fault is not None:
                self.injected[fault] += 1
                self._faults_per_key[name] += 1
            return fault

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like S3
            timeout = proxy.timeout

            def setup(self):
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self):
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, format, *args):  # quiet
                pass

            def do_GET(self):
                self._handle()

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _drop(self):
                self.close_connection = True
                try:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _handle(self):
                body = self._read_body()
                parts = urlsplit(self.path)
                bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
                fault = proxy._decide(bucket, key) if self.command == "GET" and bucket and key else None
                if fault in _ERRORS:
                    status, code, message = _ERRORS[fault]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><Key>{key}</Key>"
                               f"<RequestId>faultproxy</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "stall":
                    proxy._stopping.wait(proxy.stall_seconds)
                if fault in ("drop_before_response", "stall"):
                    self._drop()
                    return
                status, reason, headers, payload = self._forward(body)
                with proxy._lock:
                    proxy.forwarded[self.command] += 1
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                if self.command == "HEAD":
                    length = dict((n.lower(), v) for n, v in headers).get("content-length", "0")
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if fault == "drop_mid_body":
                    self.wfile.write(payload[: len(payload) // 2])
                    self._drop()
                    return
                self.wfile.write(payload)

            def _forward(self, body: bytes):
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.timeout)
                try:
                    headers = {name: value for name, value in self.headers.items()
                               if name.lower() not in _HOP_BY_HOP}
                    headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body if body or self.command in (
                        "PUT", "POST") else None, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    return response.status, response.reason, response.getheaders(), payload
                finally:
                    upstream.close()

        return Handler
