"""One POST to an OpenAI-compatible `/chat/completions`, retried the way every cc-train client needs it.

429, 5xx, timeouts, refused or reset connections and malformed bodies are retried with exponential backoff and
jitter (at least the server's Retry-After); any other 4xx is a configuration problem (bad key, unknown model,
rejected request) and raises the caller's error at once. Keys come only from environment variables, by name,
and never appear in a message.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable

import httpx

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0


class Transient(Exception):
    """A failure worth retrying: 429, 5xx, timeout, connection error, malformed response."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def api_key(env_name: str | None, missing: Callable[[str], Exception]) -> str | None:
    """The key held by the environment variable `env_name` (None: no Authorization header)."""
    if env_name is None:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise missing(f"environment variable {env_name} is not set")
    return key


def backoff(retry: int, retry_after_s: float | None) -> float:
    """Seconds before retry `retry` (0-based): exponential with jitter, at least the server's Retry-After."""
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retry)
    delay = random.uniform(delay / 2, delay)
    if retry_after_s is not None:
        delay = max(delay, min(BACKOFF_CAP_S, retry_after_s))
    return delay


def retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def server_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:500]
    except (ValueError, AttributeError):
        pass
    return response.text[:500] or response.reason_phrase


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: dict,
    semaphore: asyncio.Semaphore,
    max_retries: int,
    rejected: Callable[[int, str], Exception],
) -> tuple[dict | None, str | None]:
    """(response JSON, None), or (None, what failed) once the retries are exhausted; `rejected(status, message)`
    is raised for a 4xx other than 429."""
    last: Transient | None = None
    for attempt in range(max_retries + 1):
        if last is not None:
            await asyncio.sleep(backoff(attempt - 1, last.retry_after_s))
        try:
            async with semaphore:
                response = await client.post(url, json=body)
            status = response.status_code
            if status == 429 or status >= 500:
                raise Transient(f"HTTP {status}: {server_message(response)}", retry_after(response))
            if status >= 400:
                raise rejected(status, server_message(response))
            try:
                return response.json(), None
            except ValueError as error:
                raise Transient(f"HTTP {status} with a malformed body: {response.text[:200]!r}") from error
        except Transient as error:
            last = error
        except httpx.HTTPError as error:  # timeouts, refused / reset connections, protocol errors
            last = Transient(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    return None, f"failed after {max_retries + 1} attempt(s): {last}"
