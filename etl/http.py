"""One shared, polite HTTP client: timeouts, retries with exponential backoff and jitter on 5xx/429/420,
`Retry-After` honoured, and HTML where JSON was expected treated as a retryable error with a clear message."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import requests

USER_AGENT = "treeoflife-curation/0.1 (+https://github.com/; biodiversity research crawler)"
RETRYABLE_STATUS = frozenset({420, 429, 500, 502, 503, 504})


class FetchError(RuntimeError):
    """A request that failed for good; `kind` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class HttpConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    user_agent: str = USER_AGENT


class PoliteClient:
    """A requests session with the retry policy above; one per process."""

    def __init__(self, config: HttpConfig | None = None, seed: int | None = None) -> None:
        self.config = config or HttpConfig()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = self.config.user_agent
        self._rng = random.Random(seed)
        self.retries = 0

    def _sleep_for(self, attempt: int, response: requests.Response | None) -> float:
        if response is not None and (ra := response.headers.get("Retry-After")):
            try:
                return min(float(ra), self.config.backoff_max)
            except ValueError:
                pass
        delay = min(self.config.backoff_base * 2**attempt, self.config.backoff_max)
        return delay * (0.5 + self._rng.random() / 2)

    def get(self, url: str, params: dict[str, Any] | None = None) -> requests.Response:
        last: FetchError | None = None
        for attempt in range(self.config.max_retries + 1):
            response = None
            try:
                response = self.session.get(
                    url, params=params, timeout=(self.config.connect_timeout, self.config.read_timeout)
                )
            except requests.Timeout as exc:
                last = FetchError("timeout", f"timeout fetching {url}: {exc}")
            except requests.ConnectionError as exc:
                last = FetchError("connection_error", f"connection error fetching {url}: {exc}")
            else:
                if response.status_code < 400:
                    return response
                kind = f"http_{response.status_code}"
                last = FetchError(kind, f"HTTP {response.status_code} from {url}", response.status_code)
                if response.status_code not in RETRYABLE_STATUS:
                    raise last
            if attempt < self.config.max_retries:
                self.retries += 1
                time.sleep(self._sleep_for(attempt, response))
        assert last is not None
        raise last

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        """GET and decode JSON; an HTML or truncated body is retried, then raised as `bad_json`."""
        last: FetchError | None = None
        for attempt in range(self.config.max_retries + 1):
            response = self.get(url, params)
            try:
                return response.json()
            except (json.JSONDecodeError, requests.JSONDecodeError, ValueError):
                ctype = response.headers.get("Content-Type", "?")
                snippet = response.text[:80].replace("\n", " ")
                last = FetchError("bad_json", f"expected JSON from {response.url}, got {ctype}: {snippet!r}")
            if attempt < self.config.max_retries:
                self.retries += 1
                time.sleep(self._sleep_for(attempt, None))
        assert last is not None
        raise last
