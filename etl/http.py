"""The one HTTP layer of the pipeline, for ingest's API pages and fetch's image downloads alike: one error
type (`HttpError`), one retry policy (`retrying`: exponential back-off with jitter on 5xx/429/420 and network
errors, `Retry-After` honoured), one per-host adaptive rate (`HostThrottle`), and, for URLs taken from
records, the address guard and the whole-request deadline."""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urljoin, urlparse

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from warehouse.contracts import redact

USER_AGENT = "treeoflife-curation/0.1 (+https://github.com/; biodiversity research crawler)"
RETRYABLE_STATUS = frozenset({420, 429, 500, 502, 503, 504})  # GBIF answers 420 when clients should slow down


class HostThrottle:
    """Per-host concurrency cap and adaptive request rate, shared by the threads of one process.

    Multiplicative increase and decrease on the gap between request starts. A success shortens it by 10%,
    but only a second or more after the last cut (right after a cut, successes are the server recovering,
    not spare capacity). A 420/429/5xx doubles it, unless the refused request was scheduled before the last
    cut (at the old rate: a refused burst of parallel requests counts once), and blocks the host for the
    back-off or the server's `Retry-After`: every thread waits, not just the one refused.
    """

    def __init__(self, per_host: int, rate: float, rate_min: float, rate_max: float, clock=time.monotonic):
        self.per_host, self.rate_min, self.rate_max = per_host, rate_min, rate_max
        self.start_gap = 1.0 / rate
        self.clock = clock
        self._guard = threading.Lock()
        self._slots: dict[str, threading.Semaphore] = {}
        self._gap: dict[str, float] = {}
        self._next: dict[str, float] = {}
        self._last_cut: dict[str, float] = {}
        self.cuts: dict[str, int] = {}  # rate halvings per host, for observability and tests
        self._blocked: dict[str, float] = {}

    def gap(self, host: str) -> float:
        return self._gap.get(host, self.start_gap)

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[float]:
        """Hold one of the host's request slots, starting no earlier than its rate allows; yields the time the
        start was scheduled (`throttled` compares it with the last cut)."""
        with self._guard:
            sem = self._slots.setdefault(host, threading.Semaphore(self.per_host))
        with sem:
            with self._guard:
                now = self.clock()
                start = max(now, self._next.get(host, now))
                self._next[host] = start + self.gap(host)
            if start > now:
                time.sleep(start - now)
            # A refusal while this request waited blocks the host: wait that out too, rather than be refused.
            while (blocked := self._blocked.get(host, 0.0) - self.clock()) > 0:
                time.sleep(blocked)
            yield now  # when it was scheduled, at the rate of that moment

    def success(self, host: str) -> None:
        with self._guard:
            if self.clock() - self._last_cut.get(host, -1e18) >= 1.0:
                self._gap[host] = max(1.0 / self.rate_max, self.gap(host) * 0.9)

    def throttled(self, host: str, wait: float, sent_at: float | None = None) -> None:
        with self._guard:
            now = self.clock()
            if sent_at is None or sent_at >= self._last_cut.get(host, -1e18):
                self._gap[host] = min(1.0 / self.rate_min, self.gap(host) * 2.0)
                self._last_cut[host] = now
                self.cuts[host] = self.cuts.get(host, 0) + 1
            self._next[host] = max(self._next.get(host, 0.0), now + wait)
            self._blocked[host] = max(self._blocked.get(host, 0.0), now + wait)


class HttpError(RuntimeError):
    """A request that failed for good, or one attempt that failed (the retry loop decides).

    `kind` is the machine-readable reason (a drop reason for fetch: `timeout`, `http_503`, `bad_json`, ...),
    `status` the HTTP status when there was an answer, `retry_after` its `Retry-After` header, and `host` /
    `sent_at` the host that answered and when the attempt was scheduled (for `HostThrottle.throttled`)."""

    def __init__(
        self, kind: str, message: str, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.host: str | None = None
        self.sent_at: float | None = None


TRANSIENT_KINDS = frozenset({"timeout", "connection_error", *(f"http_{s}" for s in RETRYABLE_STATUS)})


def request_error(exc: requests.RequestException, url: str) -> HttpError:
    """A requests exception as an HttpError of kind `timeout` or `connection_error`."""
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return HttpError("timeout", f"timeout fetching {url}: {str(exc)[:200]}")
    return HttpError("connection_error", f"connection error fetching {url}: {str(exc)[:200]}")


def status_error(response: requests.Response, url: str, host: str, sent_at: float) -> HttpError:
    err = HttpError(
        f"http_{response.status_code}",
        f"HTTP {response.status_code} from {url}",
        response.status_code,
        response.headers.get("Retry-After"),
    )
    err.host, err.sent_at = host, sent_at
    return err


@dataclass(frozen=True)
class HttpConfig:
    """How politely one process talks to one kind of host: timeouts, retries and the per-host rate.
    API pages (ingest) use the defaults; image hosts (fetch) use `IMAGE_HOSTS`."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0  # also the cap on a server's Retry-After
    user_agent: str = USER_AGENT
    per_host: int = field(default=2, metadata={"help": "concurrent requests per host, per worker"})
    host_rate: float = field(  # adapts (HostThrottle)
        default=5.0, metadata={"help": "starting requests/s per host, per worker (adapts)"}
    )
    host_rate_min: float = 0.2
    host_rate_max: float = 50.0
    # Bounds on what a server can make us hold or wait for (ingest's API pages; fetch has its own): a body
    # over `max_body_bytes` and a request, headers and body, longer than `deadline` seconds end as errors.
    max_body_bytes: int = 256 * 2**20
    deadline: float = 600.0
    max_redirects: int = 5
    allow_private_hosts: bool = (
        False  # an operator's setting (a mirror on the LAN, the loopback sample world)
    )

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.per_host < 1 or not 0 < self.host_rate_min <= self.host_rate_max:
            raise ValueError("max_retries must be >= 0, per_host >= 1, 0 < host_rate_min <= host_rate_max")

    def throttle(self) -> HostThrottle:
        return HostThrottle(self.per_host, self.host_rate, self.host_rate_min, self.host_rate_max)


# Image hosts: many hosts, each asked often; a failed image is recorded and retried by a later run.
IMAGE_HOSTS = HttpConfig(
    read_timeout=20.0,
    max_retries=2,
    backoff_max=10.0,
    per_host=4,
    host_rate=20.0,
    host_rate_min=0.5,
    host_rate_max=500.0,
)


def backoff(config: HttpConfig, attempt: int, retry_after: str | None, rng: random.Random) -> float:
    """Seconds before the next attempt: the server's Retry-After (capped), else jittered exponential."""
    if retry_after:
        try:
            return min(float(retry_after), config.backoff_max)
        except ValueError:
            pass
    delay = min(config.backoff_base * 2**attempt, config.backoff_max)
    return delay * (0.5 + rng.random() / 2)  # no herd


def retrying(
    attempt: Callable[[], Any],
    config: HttpConfig,
    throttle: HostThrottle,
    rng: random.Random,
    on_retry: Callable[[], None] | None = None,
) -> Any:
    """The one retry policy: call `attempt` until it returns, or raises an HttpError that is not transient,
    or `config.max_retries` retries are spent. A 420/429/5xx halves the host's rate and blocks the host for the
    back-off (every thread waits in its slot, not just this one); a network error just waits."""
    for n in range(config.max_retries + 1):
        try:
            return attempt()
        except HttpError as err:
            if err.kind not in TRANSIENT_KINDS or n == config.max_retries:
                raise
            wait = backoff(config, n, err.retry_after, rng)
            if on_retry is not None:
                on_retry()
            if err.status in RETRYABLE_STATUS and err.host:
                throttle.throttled(err.host, wait, err.sent_at)  # the next slot waits it out
            else:
                time.sleep(wait)
    raise AssertionError("unreachable")


class PoliteClient:
    """A requests session with the retry policy above and a per-host adaptive rate; one per process
    (the API pages of ingest).

    Every connection goes through the address guard (`GuardedAdapter`: a private address is refused unless
    `allow_private_hosts`), redirects are followed by hand (each hop guarded, credentials never sent past
    the first host), the environment's proxies are ignored (a proxy would connect on our behalf, past the
    guard), and each request is bounded in size (`max_body_bytes`) and time (`deadline`)."""

    def __init__(
        self, config: HttpConfig | None = None, seed: int | None = None, auth: tuple[str, str] | None = None
    ) -> None:
        self.config = config or HttpConfig()
        self.session = guarded_session(
            AddressPolicy(allow_private=self.config.allow_private_hosts), self.config.user_agent
        )
        self.auth = auth
        self.throttle = self.config.throttle()
        self._rng = random.Random(seed)
        self.retries = 0
        self.requests = 0
        self.max_requests: int | None = None  # a run's bound on pages (`IngestConfig.max_pages`)

    def _count_retry(self) -> None:
        self.retries += 1

    def _attempt(self, method: str, url: str, kwargs: dict[str, Any], sink: Any | None) -> requests.Response:
        auth = kwargs.pop("auth", self.auth)
        first_host = urlparse(url).hostname or ""
        with bounded_request(self.config.deadline) as deadline:
            for _ in range(self.config.max_redirects + 1):
                host = check_http_url(url)
                with self.throttle.slot(host) as scheduled:
                    try:
                        response = self.session.request(
                            method,
                            url,
                            **{
                                "timeout": (self.config.connect_timeout, self.config.read_timeout),
                                **kwargs,
                                "auth": auth if host == first_host else None,
                                "stream": True,
                                "allow_redirects": False,
                            },
                        )
                    except AddressRefusedError as exc:
                        raise HttpError(exc.kind, str(exc)) from exc
                    except requests.RequestException as exc:
                        raise request_error(exc, url) from exc
                    with response:
                        if response.is_redirect:
                            url = urljoin(url, response.headers["Location"])
                            if response.status_code in (301, 302, 303) and method != "HEAD":
                                method, kwargs = "GET", {k: v for k, v in kwargs.items() if k != "json"}
                            continue
                        if response.status_code >= 400:
                            raise status_error(response, url, host, scheduled)
                        try:
                            read_capped(response, self.config.max_body_bytes, sink)
                        except requests.RequestException as exc:
                            raise request_error(exc, url) from exc
                        if deadline.expired:
                            raise HttpError("timeout", "deadline passed during the body")
                    self.throttle.success(host)
                    return response
            raise HttpError("too_many_redirects", f"more than {self.config.max_redirects} redirects")

    def request(self, method: str, url: str, *, sink: Any | None = None, **kwargs: Any) -> requests.Response:
        """One request with retries: 420/429/5xx and network errors are retried; other 4xx raise at once.
        The body is read here, at most `max_body_bytes`: into `response.content`, or written to `sink` (a
        binary file, rewound before each attempt) when one is given."""

        self.requests += 1
        if self.max_requests is not None and self.requests > self.max_requests:
            raise HttpError(
                "too_many_pages", f"more than {self.max_requests} requests in one run (max_pages); stopped"
            )

        def attempt() -> requests.Response:
            if sink is not None:
                sink.seek(0)
                sink.truncate()
            return self._attempt(method, url, dict(kwargs), sink)

        return retrying(attempt, self.config, self.throttle, self._rng, self._count_retry)

    def get(self, url: str, params: dict[str, Any] | None = None) -> requests.Response:
        return self.request("GET", url, params=params)

    def download(self, url: str, dest: Path, max_bytes: int | None = None) -> Path:
        """Stream `url` to `dest` atomically (a `.part` file renamed when whole), at most `max_bytes`."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        client = self if max_bytes is None else self._with(max_body_bytes=max_bytes)
        try:
            with open(tmp, "wb") as fh:
                client.request("GET", url, sink=fh)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _with(self, **changes: Any) -> PoliteClient:
        other = copy.copy(self)
        other.config = replace(self.config, **changes)
        return other

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        """GET and decode JSON; an HTML or truncated body is retried, then raised as `bad_json` (the error
        names the content type and size, never the body: it may hold anything)."""

        def attempt() -> Any:
            response = self.get(url, params)
            try:
                return response.json()
            except (json.JSONDecodeError, requests.JSONDecodeError, ValueError):
                ctype = response.headers.get("Content-Type", "?")[:80]
                raise HttpError(
                    "bad_json",
                    f"expected JSON from {redact(response.url)}, got {ctype!r} ({len(response.content)} bytes)",
                ) from None

        for n in range(self.config.max_retries + 1):
            try:
                return attempt()
            except HttpError as err:
                if err.kind != "bad_json" or n == self.config.max_retries:
                    raise
                self.retries += 1
                time.sleep(backoff(self.config, n, None, self._rng))
        raise AssertionError("unreachable")


def check_http_url(url: str) -> str:
    """The URL's host; refuses schemes other than http(s) and URLs without a host."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise HttpError("unsupported_url_scheme", f"scheme {parsed.scheme!r} not allowed")
    host = parsed.hostname or ""
    if not host:
        raise HttpError("bad_url", "URL has no host")
    return host


def read_capped(response: requests.Response, max_bytes: int, sink: Any | None = None) -> None:
    """Read a streamed response's body, refusing it past `max_bytes` (declared or received): into
    `response._content` (what `.content`, `.text` and `.json()` read), or written to `sink`."""
    declared = response.headers.get("Content-Length") or ""
    if declared.isdigit() and int(declared) > max_bytes:
        raise HttpError("too_large", f"Content-Length {declared} > {max_bytes}")
    chunks, size = [], 0
    for chunk in response.iter_content(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise HttpError("too_large", f"body over {max_bytes} bytes")
        if sink is not None:
            sink.write(chunk)
        else:
            chunks.append(chunk)
    response._content = b"".join(chunks)
    response._content_consumed = True


# --- Address guard and deadline -------------------------------------------------------------------------
# Checking a URL's host name before the request is not enough: redirects go elsewhere, and a name can resolve
# differently at connect time. So the check sits in the connection itself: every connection, first hop or
# redirect, resolves the name once, refuses a non-public address, and connects to exactly the address it
# checked. The same connection class lets a per-request deadline cut a response that trickles in.


class AddressRefusedError(Exception):
    """A connection refused before it was made. Deliberately not an OSError, so urllib3 and requests pass it
    through unwrapped and unretried. `kind` is the fetch status: `private_address` or `dns_error`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_DENIED_NETS = [
    ipaddress.ip_network(n)
    for n in (
        "100.64.0.0/10",  # carrier-grade NAT, shared address space
        "2002::/16",  # 6to4: wraps an IPv4 address of any kind
        "2001::/32",  # Teredo: likewise
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",
    )
]


def is_public_address(ip: str) -> bool:
    """Whether `ip` is a public unicast address. IPv4-mapped IPv6 forms are judged as the IPv4 they map."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in _DENIED_NETS if net.version == addr.version):
        return False
    return addr.is_global and not addr.is_multicast


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the hook tests replace to point a "public" name at loopback)."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    # Looked up at call time, so tests can swap the module's functions.
    resolve: Callable[[str, int], list[str]] | None = None
    is_public: Callable[[str], bool] | None = None

    def pick(self, host: str, port: int) -> str:
        """The address to connect to: the first one, after every address of the name passed the check (a
        name with one private address among public ones is refused: the resolver may hand out either)."""
        try:
            addresses = (self.resolve or resolve_host)(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise AddressRefusedError("dns_error", f"{host}: {exc}") from exc
        if not addresses:
            raise AddressRefusedError("dns_error", f"{host} resolves to no address")
        if not self.allow_private:
            public = self.is_public or is_public_address
            for ip in addresses:
                if not public(ip):
                    raise AddressRefusedError(
                        "private_address",
                        f"{host} resolves to {ip}, not a public address; --allow-private-hosts",
                    )
        return addresses[0]


_tls = threading.local()


def _request_slot() -> SimpleNamespace:
    """This thread's record of how to cut its current request's socket (a plain object, so a deadline timer
    in another thread can read it)."""
    slot = getattr(_tls, "slot", None)
    if slot is None:
        slot = _tls.slot = SimpleNamespace(shutdown=None)
    return slot


def _guarded(base: type, policy: AddressPolicy) -> type:
    class Guarded(base):
        def _new_conn(self):
            ip = policy.pick(self._dns_host, self.port)
            host = self._dns_host
            self._dns_host = ip  # connect to the address that was checked, not a second lookup
            try:
                return super()._new_conn()
            finally:
                self._dns_host = host

        def request(self, *args, **kwargs):
            result = super().request(*args, **kwargs)
            # The socket's own shutdown, kept now: http.client drops `sock` when it hands a closing
            # connection to its response, and an SSL socket's raw socket is detached from it.
            _request_slot().shutdown = getattr(self.sock, "shutdown", None)
            return result

    Guarded.__name__ = f"Guarded{base.__name__}"
    return Guarded


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections apply an AddressPolicy on every connect."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http = type(
            "GuardedHTTPPool",
            (urllib3.connectionpool.HTTPConnectionPool,),
            {"ConnectionCls": _guarded(urllib3.connection.HTTPConnection, self.policy)},
        )
        https = type(
            "GuardedHTTPSPool",
            (urllib3.connectionpool.HTTPSConnectionPool,),
            {"ConnectionCls": _guarded(urllib3.connection.HTTPSConnection, self.policy)},
        )
        self.poolmanager.pool_classes_by_scheme = {"http": http, "https": https}


def guarded_session(policy: AddressPolicy, user_agent: str = USER_AGENT) -> requests.Session:
    """A session whose every connection is guarded. `trust_env` is off: with HTTP(S)_PROXY set, requests
    would connect to the proxy (which the guard passes) and the proxy to the target (which it never sees),
    and a netrc file's credentials would be sent to whatever host a record names."""
    session = requests.Session()
    session.trust_env = False
    session.headers["User-Agent"] = user_agent
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextlib.contextmanager
def bounded_request(seconds: float) -> Iterator[Deadline]:
    """A `Deadline` around one request (redirects included) whose cut shows as one clear error: a
    `timeout` or `connection_error` after the deadline passed becomes `timeout` naming the deadline."""
    with Deadline(seconds) as deadline:
        try:
            yield deadline
        except HttpError as exc:
            if deadline.expired and exc.kind in ("timeout", "connection_error"):
                raise HttpError("timeout", f"no complete response within the {seconds:g} s deadline") from exc
            raise


class Deadline:
    """A bound on one whole request, headers and body: when it passes, the socket of the connection the
    calling thread is using is shut down, which ends any blocked read. Use around one request per thread."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._slot = _request_slot()
        self._slot.shutdown = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        self.expired = True
        shutdown = self._slot.shutdown
        if shutdown is not None:
            with contextlib.suppress(OSError):
                shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
