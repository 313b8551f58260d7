"""Loading a model by reference (a local directory or a Hugging Face hub id) with a deadline.

`from_pretrained` asks the hub about a model id with no timeout: a hub that accepts the connection
and never answers would hold a stage forever. So the hub is probed first (`HUB_TIMEOUT`, any HTTP
answer counts); when it is silent the model is loaded from the local cache only, and a model that
is not there fails at once, naming the param and how to give a local directory instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from diysc.backbones import tiny
from diysc.errors import UserError
from diysc.probe import answer

T = TypeVar("T")
HUB_TIMEOUT = (
    10.0  # seconds the hub gets to answer about a model id (huggingface_hub's own default)
)


def load_pretrained(
    param: str,
    reference: str,
    source: str,
    what: str,
    load: Callable[[str, bool], T],
    error: type[UserError],
) -> T:
    """`load(source, local_files_only)`; a failure is one `error` naming `param` and the fix."""
    from huggingface_hub import constants

    local = tiny.is_local(source)
    silence = None
    if not local and not constants.HF_HUB_OFFLINE:
        silence = answer(f"{constants.ENDPOINT}/api/models/{source}", HUB_TIMEOUT, any_status=True)
    try:
        return load(source, local or silence is not None)
    except (OSError, ValueError) as err:
        if silence:
            hub = f"the Hugging Face hub {constants.ENDPOINT} gave {silence}"
        elif constants.HF_HUB_OFFLINE:
            hub = "HF_HUB_OFFLINE is set"
        else:
            hub = "the hub may be unreachable"
        name = reference.rstrip("/").rsplit("/", 1)[-1]
        raise error(
            f"{param} {reference!r}: cannot load {what}: not a local directory and not in the "
            f"Hugging Face cache ({hub}): {err}. To load it from disk: `hf download {reference} "
            f"--local-dir /models/{name}` where the hub answers, then -S {param}=/models/{name}"
        ) from None
