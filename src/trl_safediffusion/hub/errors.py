"""Hub errors and token hygiene: [`HubPushError`] / [`HubDownloadError`], token redaction, and the one-line causes
their messages give for a failed Hub call. No message, log line or written file carries a token."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


class HubPushError(RuntimeError):
    r"""
    An upload to the Hub failed. The local folder that was being uploaded is complete and untouched.

    Args:
        repo_id (`str`): the repo that could not be written.
        cause (`str`): what went wrong (no token in it).
        repo_type (`str`, *optional*, defaults to `"model"`): `"model"` or `"dataset"`.
        local_folder (`str`, *optional*): the local folder that holds everything that was to be uploaded.
    """

    def __init__(self, repo_id: str, cause: str, repo_type: str = "model", local_folder: str | None = None):
        self.repo_id = repo_id
        self.cause = cause
        self.repo_type = repo_type
        self.local_folder = local_folder
        kept = f" The files are kept locally in {local_folder!r}; push them again later." if local_folder else ""
        super().__init__(f"Could not push to the Hub {repo_type} repo {repo_id!r}: {cause}.{kept}")


class HubDownloadError(OSError):
    r"""
    A download from the Hub failed (e.g. fetching a checkpoint for `resume_from`).

    Args:
        repo_id (`str`): the repo that could not be read.
        cause (`str`): what went wrong (no token in it).
    """

    def __init__(self, repo_id: str, cause: str):
        self.repo_id = repo_id
        self.cause = cause
        super().__init__(f"Could not download from Hub repo {repo_id!r}: {cause}")


_TOKEN_KEYS = {"token", "hub_token", "hf_token", "use_auth_token", "auth_token", "access_token", "push_to_hub_token"}
_HF_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
REDACTED = "<redacted>"


def redact(text: str, token: str | None = None) -> str:
    """`text` with `token` and anything that looks like a Hugging Face token (`hf_...`) replaced by `<redacted>`."""
    if token:
        text = text.replace(token, REDACTED)
    return _HF_TOKEN_PATTERN.sub(REDACTED, text)


def scrub_tokens(obj: Any) -> Any:
    r"""
    A copy of `obj` (nested dicts / lists) that is safe to write to disk: keys naming a token (`token`, `hub_token`,
    `hf_token`, `use_auth_token`, ...) are dropped and strings that look like Hugging Face tokens are redacted.

    Args:
        obj (`Any`): a config dump, card metadata or any JSON-like value.
    """
    if isinstance(obj, Mapping):
        return {k: scrub_tokens(v) for k, v in obj.items() if str(k).lower() not in _TOKEN_KEYS}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_tokens(v) for v in obj)
    if isinstance(obj, str):
        return redact(obj)
    return obj


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions a Hub call raises for network, HTTP and validation problems (the HTTP client depends on the
    huggingface_hub version: httpx2, httpx or requests)."""
    from huggingface_hub.errors import HfHubHTTPError

    types: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError]
    for module_name, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        types.append(getattr(module, attr))
    return tuple(types)


def _describe_failure(err: BaseException, token: str | None) -> str:
    """A one-line, token-free cause for `err`."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) if response is not None else None
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, RepositoryNotFoundError):
        cause = "repository not found or no write access (check the repo id and that the token can write to it)"
    elif isinstance(err, HfHubHTTPError) and status in (401, 403):
        cause = f"HTTP {status}: the token is missing, invalid or lacks write access (log in or pass a write token)"
    elif isinstance(err, HfHubHTTPError) and status is not None:
        cause = f"HTTP {status} from the Hub ({first_line})"
    elif isinstance(err, ValueError):
        cause = f"invalid request ({first_line})"
    else:
        cause = f"network error, the Hub could not be reached ({type(err).__name__}: {first_line})"
    return redact(cause, token)


__all__ = ["REDACTED", "HubDownloadError", "HubPushError", "redact", "scrub_tokens"]
