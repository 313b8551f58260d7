"""Does a server answer? One bounded HTTP probe, used before anything that could wait forever.

The request runs in a daemon thread waited on for the timeout: name resolution, which `requests`'
timeout does not bound, cannot hang the caller (nor the exit of the process).
"""

from __future__ import annotations

import threading

PROBE_TIMEOUT = 3.0  # seconds a server gets to answer


def answer(url: str, timeout: float = PROBE_TIMEOUT, any_status: bool = False) -> str | None:
    """Why `url` cannot be fetched (no answer, or an HTTP error status unless `any_status`), or
    None when it answers."""
    result: list[str | None] = []

    def probe() -> None:
        import requests

        try:
            response = requests.head(url, timeout=timeout, allow_redirects=True)
        except requests.RequestException as err:
            result.append(f"no answer ({type(err).__name__})")
            return
        failed = response.status_code >= 400 and not any_status
        result.append(f"HTTP {response.status_code}" if failed else None)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return result[0] if result else f"no answer within {timeout:g} s"
