"""Optional API keys: each key is a tenant whose threads only it can see."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import NO_RETRY, ApiError

ANONYMOUS = "anonymous"

# auto_error=False: a missing header must give our 401 in the error shape, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key, when the server has keys set.")


def owner_for_key(key: str) -> str:
    """The stable owner id of an API key (a hash, so keys never appear in state or logs).

    Args:
        key: The API key.

    Returns:
        ``"key-"`` followed by 16 hex digits of the key's SHA-256.
    """
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyRing:
    """The configured API keys; empty means auth is off and every caller is "anonymous".

    Args:
        keys: The accepted API keys (blank entries are ignored).
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = {
            hashlib.sha256(k.strip().encode()).digest(): owner_for_key(k.strip())
            for k in keys
            if k.strip()
        }

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self._digests)

    def owner(self, key: str | None) -> str | None:
        """The owner id for ``key``, or None when it is not a configured key."""
        if not self.enabled:
            return ANONYMOUS
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        # Compare digests in constant time so response timing says nothing about the keys.
        for known, owner in self._digests.items():
            if hmac.compare_digest(known, digest):
                return owner
        return None


def get_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """FastAPI dependency: the caller's owner id ("anonymous" with auth off).

    Raises:
        ApiError: 401 (type "authentication_error") for a missing or unknown key.
    """
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled:
        return ANONYMOUS
    if credentials is None:
        message = "Missing API key: send 'Authorization: Bearer <key>'."
        raise _unauthorized(message, "missing_api_key")
    owner = keyring.owner(credentials.credentials)
    if owner is None:
        raise _unauthorized("Invalid API key.", "invalid_api_key")
    return owner


def _unauthorized(message: str, code: str) -> ApiError:
    # A retry with the same key would only be refused again.
    return ApiError(
        401,
        message,
        type="authentication_error",
        code=code,
        headers={"WWW-Authenticate": "Bearer", **NO_RETRY},
    )


OwnerDep = Annotated[str, Depends(get_owner)]
