"""Kubernetes Auth for the fake Infisical: the login checks the JWT with a real TokenReview.

The fake does what Infisical's server does at `POST /api/v1/auth/kubernetes-auth/login` in its
API review mode: it sends the JWT to the cluster's TokenReview API (the test control plane's
real kube-apiserver), then applies the identity's allowed namespaces, service account names and
audience. The facts it follows, and where each comes from:

Infisical/infisical, backend/src/server/routes/v1/identity-kubernetes-auth-router.ts
(commit 0024013a):
- body `{identityId: string (trimmed), jwt: string (trimmed)}` (zod; unknown keys stripped);
  rate limit bucket `writeLimit`; no Authorization header.
- 200 `{accessToken, expiresIn, accessTokenMaxTTL, tokenType: "Bearer"}`, the same shape as the
  Universal Auth login (expiresIn = the identity's accessTokenTTL).

Infisical/infisical, backend/src/services/identity-kubernetes-auth/
identity-kubernetes-auth-service.ts (`login`, commit 0158fcb5):
- no Kubernetes Auth row for `identityId` (also: no such identity) -> NotFoundError (404)
  "Kubernetes auth method not found for identity, did you configure Kubernetes auth?".
- TokenReview: `POST <kubernetesHost>/apis/authentication.k8s.io/v1/tokenreviews` with
  `{apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: {token: <jwt>,
  audiences: [allowedAudience] only when one is set}}` and `Authorization: Bearer <reviewer>`,
  the reviewer being the identity's token reviewer JWT, or, when none is set, the client's JWT
  itself; the CA certificate, when set, is the only trust; 10 s timeout.
- `status.error` in the review -> UnauthorizedError (401) with that text as the message,
  name `KubernetesTokenReviewError`; `status.authenticated` false -> 401
  "Kubernetes token not authenticated".
- `status.user.username` must read `system:serviceaccount:<namespace>:<name>`, else
  BadRequestError (400, name `KubernetesUsernameParseError`, identity-kubernetes-auth-fns.ts).
- allowedNamespaces / allowedNames: comma-separated, each entry trimmed, compared for equality
  or as a picomatch glob; a non-empty list that does not match -> 401
  "Access denied: K8s namespace not allowed." / "Access denied: K8s name not allowed.".
- allowedAudience (one string): when set, `status.audiences` must contain it, else 401
  "Access denied: K8s audience not allowed.".
- Every check is made at every login: nothing about the JWT is cached.

Infisical/infisical, backend/src/services/identity-kubernetes-auth/
identity-kubernetes-auth-error-handlers.ts (`handleAxiosHttpError`, commit 0d89d706): a
TokenReview answered 401 -> 401 (name `KubernetesTokenReviewerUnauthorized`), 403 -> 401 (name
`KubernetesTokenReviewerForbidden`), both with the API server's `message` when it has one,
else a default naming the token reviewer ("... Ensure the service account has the
'system:auth-delegator' ClusterRole binding."); another status -> 400
`KubernetesTokenReviewRequestError`; no answer -> 400 (`KubernetesConnectionError` and kin).

Infisical's documentation, https://infisical.com/docs/documentation/platform/identities/kubernetes-auth
(and the attach endpoint, https://infisical.com/docs/api-reference/endpoints/kubernetes-auth/attach):
the reviewer is either a long-lived token reviewer JWT of a service account bound to
`system:auth-delegator`, or the incoming (client's) JWT; allowed namespaces and names are
comma-separated; the allowed audience is optional.

Not modelled: gateway review mode, sub-organizations (organizationSlug), identity auth
templates, trusted IPs at login.
"""

from __future__ import annotations

import fnmatch
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from infisical_sync.testing.fake_state import KubernetesAuthConfig

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
TOKEN_REVIEW_TIMEOUT = 10.0
NOT_CONFIGURED = "Kubernetes auth method not found for identity, did you configure Kubernetes auth?"
NOT_AUTHENTICATED = "Kubernetes token not authenticated"
NAMESPACE_NOT_ALLOWED = "Access denied: K8s namespace not allowed."
NAME_NOT_ALLOWED = "Access denied: K8s name not allowed."
AUDIENCE_NOT_ALLOWED = "Access denied: K8s audience not allowed."
REVIEWER_UNAUTHORIZED = (
    "Token reviewer JWT is invalid or expired. Please verify the token reviewer JWT is correct "
    "and has not expired."
)
REVIEWER_FORBIDDEN = (
    "Token reviewer JWT does not have permission to perform TokenReviews. Ensure the service "
    "account has the 'system:auth-delegator' ClusterRole binding."
)


class Refusal(Exception):
    """The login's error answer: status, message and the envelope's `error` name."""

    def __init__(self, status: int, message: str, error: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str


def _listed(value: str, allowed: str) -> bool:
    """Infisical's check: an entry equal to the value, or a glob matching it (picomatch; fnmatch
    is close enough for the names Kubernetes allows)."""
    entries = [entry.strip() for entry in allowed.split(",")]
    return any(entry == value or fnmatch.fnmatchcase(value, entry) for entry in entries)


async def review(auth: KubernetesAuthConfig, jwt: str) -> ServiceAccount:
    """The service account the JWT belongs to, after the TokenReview and the allow-lists;
    raises Refusal with Infisical's answer otherwise."""
    spec: dict[str, Any] = {"token": jwt}
    if auth.allowed_audience:
        spec["audiences"] = [auth.allowed_audience]
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    reviewer = auth.token_reviewer_jwt or jwt
    context = ssl.create_default_context()
    if auth.ca_pem:
        context = ssl.create_default_context(cadata=auth.ca_pem)
    url = auth.kubernetes_host.rstrip("/") + TOKEN_REVIEW_PATH
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TOKEN_REVIEW_TIMEOUT)
            ) as http,
            http.post(
                url, json=body, headers={"Authorization": f"Bearer {reviewer}"}, ssl=context
            ) as response,
        ):
            answer: Any = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Refusal(
            400,
            f"Failed to communicate with Kubernetes API server at {auth.kubernetes_host}: "
            f"{type(exc).__name__}",
            "KubernetesConnectionError",
        ) from None
    if status >= 300:
        message = answer.get("message") if isinstance(answer, dict) else None
        if status == 401:
            raise Refusal(
                401, message or REVIEWER_UNAUTHORIZED, "KubernetesTokenReviewerUnauthorized"
            )
        if status == 403:
            raise Refusal(401, message or REVIEWER_FORBIDDEN, "KubernetesTokenReviewerForbidden")
        raise Refusal(
            400,
            message or f"Kubernetes returned HTTP {status}",
            "KubernetesTokenReviewRequestError",
        )
    result = answer.get("status") or {}
    if result.get("error"):
        raise Refusal(401, str(result["error"]), "KubernetesTokenReviewError")
    if not result.get("authenticated"):
        raise Refusal(401, NOT_AUTHENTICATED, "KubernetesTokenReviewError")
    username = str((result.get("user") or {}).get("username") or "")
    parts = username.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        raise Refusal(
            400,
            f'Invalid Kubernetes service account username format: "{username}". Expected '
            "format: system:serviceaccount:<namespace>:<name>",
            "KubernetesUsernameParseError",
        )
    account = ServiceAccount(parts[2], parts[3])
    if auth.allowed_namespaces and not _listed(account.namespace, auth.allowed_namespaces):
        raise Refusal(401, NAMESPACE_NOT_ALLOWED, "UnauthorizedError")
    if auth.allowed_names and not _listed(account.name, auth.allowed_names):
        raise Refusal(401, NAME_NOT_ALLOWED, "UnauthorizedError")
    if auth.allowed_audience and auth.allowed_audience not in (result.get("audiences") or []):
        raise Refusal(401, AUDIENCE_NOT_ALLOWED, "UnauthorizedError")
    return account
