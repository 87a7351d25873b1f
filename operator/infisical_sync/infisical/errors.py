"""Typed errors for Infisical calls. Each carries a condition reason a user can act on.

Messages hold the HTTP status, Infisical's own `message` and `reqId` — never a secret value,
token or client secret (request bodies are never quoted).
"""

from __future__ import annotations

from collections.abc import Sequence


class InfisicalError(Exception):
    """Base class. `reason` is the one-word condition reason shown in status."""

    reason = "ServerError"
    retryable = False
    retry_after: float | None = None  # seconds before trying again is worth it, when known

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        remote_message: str | None = None,
        request_id: str | None = None,
        error: str | None = None,
    ) -> None:
        self.status = status
        self.remote_message = remote_message
        self.request_id = request_id
        self.error = error
        detail = message
        if remote_message and remote_message not in message:
            detail = f"{message}: {remote_message}"
        if request_id:
            detail = f"{detail} (reqId {request_id})"
        super().__init__(detail)


class Fenced(InfisicalError):
    """A write not sent: this replica may have lost the leader Lease (fence.py)."""

    reason = "NotLeader"


class InvalidCredentials(InfisicalError):
    """401 at login or after a fresh login: wrong/expired/revoked client secret, locked identity."""

    reason = "InvalidCredentials"


class CredentialsLocked(InvalidCredentials):
    """401 'temporarily locked': Infisical locks an identity after repeated failed logins."""

    reason = "CredentialsLocked"


class KubernetesAuthRefused(InvalidCredentials):
    """401 at a Kubernetes Auth login: Infisical's TokenReview did not authenticate the token
    (e.g. its audience is not the identity's allowed audience), or the service account's
    namespace or name is not in the identity's allow-lists."""

    reason = "KubernetesAuthRefused"


class IdentityNotConfiguredForKubernetesAuth(InfisicalError):
    """404 at a Kubernetes Auth login: no identity with this ID has Kubernetes Auth."""

    reason = "IdentityNotConfiguredForKubernetesAuth"


class ServiceAccountTokenUnavailable(InfisicalError):
    """No login was attempted: the service account's token could not be requested."""

    reason = "ServiceAccountTokenUnavailable"


class ServiceAccountNotFound(ServiceAccountTokenUnavailable):
    reason = "ServiceAccountNotFound"


class TokenRequestForbidden(ServiceAccountTokenUnavailable):
    """The API server refused the TokenRequest (403): the operator's RBAC lacks
    serviceaccounts/token create in that namespace."""

    reason = "TokenRequestForbidden"


class Forbidden(InfisicalError):
    """403 other than TokenError: not a project member, missing permission, IP not trusted."""

    reason = "Forbidden"


class NotFound(InfisicalError):
    reason = "NotFound"


class Conflict(InfisicalError):
    """400 because the destination changed between read and write (e.g. 'already exists')."""

    reason = "Conflict"


class ValidationFailed(InfisicalError):
    """400/422: the request itself was refused (bad key, bad path, bad project)."""

    reason = "ValidationFailed"


class RateLimited(InfisicalError):
    reason = "RateLimited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float, **kwargs: object) -> None:
        self.retry_after: float = retry_after
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class ServerError(InfisicalError):
    reason = "ServerError"
    retryable = True


class Unreachable(InfisicalError):
    """DNS, TCP, timeouts, connection resets."""

    reason = "Unreachable"
    retryable = True


class TLSError(InfisicalError):
    """The certificate could not be verified (wrong CA, wrong host name, expired)."""

    reason = "TLSError"


class InsecureUrl(InfisicalError):
    """An http:// instance URL without allowInsecureHttp."""

    reason = "InsecureHttp"


class Redirected(InfisicalError):
    """A 3xx: redirects are never followed (credentials must not go to another URL)."""

    reason = "Redirected"


class ApprovalRequired(InfisicalError):
    """A write answered 200 `{"approval": ...}`: a change-approval policy on the destination
    held it back. Nothing was written; Infisical opened a change request that a human approves
    and merges. Not retried: sending the write again would open another request."""

    reason = "ApprovalRequired"

    def __init__(self, message: str, *, approval_ids: Sequence[str], **kwargs: object) -> None:
        self.approval_ids = tuple(approval_ids)
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
