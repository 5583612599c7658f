"""The project's one HTTP client: bounded, size-capped, retried GETs for images and JSON APIs.

Every attempt has a total deadline (not only per-socket-read timeouts), so a server that drips
one byte a second cannot hold a worker forever, and the body is counted while streaming, so a
missing or lying Content-Length cannot make us buffer more than `max_bytes`.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import requests
import urllib3.exceptions

try:
    _VERSION = version("emogan")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "dev"

USER_AGENT = f"emogan/{_VERSION} (research dataset builder; python-requests/{requests.__version__})"
MAX_REDIRECTS = 5
BACKOFF_BASE_S = 0.5
MAX_BACKOFF_S = 30.0
# A server asking us to come back later than this is treated as a failure, not waited out.
MAX_RETRY_AFTER_S = 120.0
JSON_MAX_BYTES = 10_000_000
_CHUNK_BYTES = 64 * 1024
# Besides 5xx: the server timed out waiting for us (408) or asks us to slow down (429).
_RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class FetchedFile:
    data: bytes
    content_type: str
    final_url: str


class FetchError(Exception):
    """A download that did not succeed. `reason` is a short stable slug used for counting."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s


_local = threading.local()


def _session() -> requests.Session:
    # One Session per thread: requests does not promise a Session is thread-safe, and a
    # per-thread one still reuses connections across the downloads of a worker.
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        session.max_redirects = MAX_REDIRECTS
        _local.session = session
    return session


def fetch_bytes(
    url: str,
    *,
    timeout_s: float,
    max_bytes: int,
    retries: int,
    accept_prefix: str = "image/",
    params: Mapping[str, str | int] | None = None,
) -> FetchedFile:
    """GET `url` (following up to MAX_REDIRECTS redirects); raise FetchError on failure.

    `timeout_s` bounds connecting, each read, and the whole attempt. Connection errors,
    timeouts, 408, 429 and 5xx are retried `retries` times with exponential backoff and jitter
    (or the server's Retry-After); other failures are final at once.
    """
    for attempt in range(retries + 1):
        try:
            return _get_once(url, params, timeout_s, max_bytes, accept_prefix)
        except FetchError as error:
            if not error.retryable or attempt == retries:
                raise
            time.sleep(
                error.retry_after_s if error.retry_after_s is not None else _backoff(attempt)
            )
    raise AssertionError("unreachable: the last attempt returns or raises")


def fetch_json(
    url: str,
    params: Mapping[str, str | int] | None = None,
    *,
    timeout_s: float,
    retries: int,
    max_bytes: int = JSON_MAX_BYTES,
) -> Any:
    """GET a JSON document with the same limits and retries as fetch_bytes."""
    fetched = fetch_bytes(
        url,
        params=params,
        timeout_s=timeout_s,
        max_bytes=max_bytes,
        retries=retries,
        accept_prefix="application/json",
    )
    try:
        return json.loads(fetched.data)
    except ValueError as error:
        raise FetchError("bad_json", f"response is not valid JSON ({error})") from None


def _backoff(attempt: int) -> float:
    delay = min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2**attempt)
    # Equal jitter: parallel workers hit by the same outage do not come back in lock step.
    return delay / 2 + random.uniform(0, delay / 2)


def _get_once(
    url: str,
    params: Mapping[str, str | int] | None,
    timeout_s: float,
    max_bytes: int,
    accept_prefix: str,
) -> FetchedFile:
    deadline = time.monotonic() + timeout_s
    try:
        with _session().get(
            url, params=params, stream=True, timeout=(timeout_s, timeout_s)
        ) as response:
            _check_status(response)
            content_type = _check_content_type(response, accept_prefix)
            _check_declared_size(response, max_bytes)
            data = _read_body(response, max_bytes, deadline, timeout_s)
            return FetchedFile(data=data, content_type=content_type, final_url=response.url)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
        raise _as_fetch_error(error) from None


def _check_status(response: requests.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"HTTP {status} {response.reason or ''}".rstrip()
    if status < 500 and status not in _RETRYABLE_4XX:
        raise FetchError(f"http_{status}", message)
    retry_after = _retry_after_s(response.headers.get("Retry-After"))
    if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
        raise FetchError(f"http_{status}", f"{message}, asks to retry after {retry_after:.0f} s")
    raise FetchError(f"http_{status}", message, retryable=True, retry_after_s=retry_after)


def _retry_after_s(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), None if absent."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _check_content_type(response: requests.Response, accept_prefix: str) -> str:
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not content_type.startswith(accept_prefix):
        shown = content_type or "no Content-Type"
        raise FetchError(
            "not_image" if accept_prefix == "image/" else "bad_content_type",
            f"server sent {shown}, expected {accept_prefix}*",
        )
    return content_type


def _check_declared_size(response: requests.Response, max_bytes: int) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError("too_large", f"Content-Length {declared} exceeds {max_bytes} bytes")


def _read_body(
    response: requests.Response, max_bytes: int, deadline: float, timeout_s: float
) -> bytes:
    body = bytearray()
    # read1 returns whatever one socket read yields, so the deadline is checked at least once per
    # read timeout even when the server sends a byte at a time; read(n) would block until n bytes.
    while chunk := response.raw.read1(_CHUNK_BYTES, decode_content=True):
        body += chunk
        if len(body) > max_bytes:
            raise FetchError("too_large", f"body exceeds {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError(
                "timeout", f"download took longer than {timeout_s:g} s", retryable=True
            )
    return bytes(body)


def _as_fetch_error(error: Exception) -> FetchError:
    detail = _describe(error)
    if isinstance(error, requests.TooManyRedirects):
        return FetchError("too_many_redirects", f"more than {MAX_REDIRECTS} redirects")
    if isinstance(error, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
        return FetchError("ssl", detail)
    if isinstance(error, requests.Timeout | urllib3.exceptions.TimeoutError):
        return FetchError("timeout", detail, retryable=True)
    if isinstance(
        error,
        requests.exceptions.InvalidURL
        | requests.exceptions.InvalidSchema
        | requests.exceptions.MissingSchema,
    ):
        return FetchError("bad_url", detail)
    if isinstance(error, requests.exceptions.ContentDecodingError | urllib3.exceptions.DecodeError):
        return FetchError("bad_encoding", detail)
    return FetchError("connection", detail, retryable=True)


def _describe(error: Exception) -> str:
    """The useful part of a requests/urllib3 error, which nests the OS error deep in its text."""
    text = " ".join(str(error).split()) or type(error).__name__
    os_error = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if os_error:
        return os_error.group(0)
    return text if len(text) <= 200 else text[:197] + "..."
