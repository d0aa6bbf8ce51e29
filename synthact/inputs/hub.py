"""Hugging Face hub reachability: fail within seconds, with a readable error, when the hub is out of reach."""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request

from synthact.errors import SynthactError

HUB_PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """Whether the Hugging Face libraries were told to stay offline (HF_HUB_OFFLINE)."""
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=8)
def _hub_reachable(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def require_hub(what: str, local_hint: str) -> None:
    """Fail within seconds when the hub cannot be reached (instead of minutes of library retries).

    In offline mode (HF_HUB_OFFLINE=1) the libraries read only their local cache, which is fast,
    so no probe is made.
    """
    if hub_offline():
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not _hub_reachable(endpoint):
        raise SynthactError(
            f"cannot fetch {what}: the Hugging Face hub ({endpoint}) cannot be reached from here. "
            f"Point the spec at local copies instead ({local_hint}); or, if it is already in the local "
            "Hugging Face cache, set HF_HUB_OFFLINE=1"
        )


def hub_error(what: str, local_hint: str, error: Exception) -> SynthactError:
    """A readable error for a failed hub fetch."""
    detail = " ".join(str(error).split())[:300]
    offline = " Offline mode (HF_HUB_OFFLINE=1) is on, so only the local Hugging Face cache was searched." if hub_offline() else ""
    return SynthactError(
        f"could not load {what} ({type(error).__name__}: {detail}).{offline} Check the name, or point the spec "
        f"at local copies instead: {local_hint}"
    )
