"""Bearer API keys: every /v1 route but health needs one; each key belongs to one tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.services import ApiServices, Caller
from app.errors import Unauthenticated

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `mneme keys create --tenant NAME`, as 'Bearer <key>'.",
)


def services(request: Request) -> ApiServices:
    found: ApiServices = request.app.state.services
    return found


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The tenant of the request's key, or :class:`Unauthenticated` (401)."""
    if credentials is None:
        raise Unauthenticated(
            "no API key: send 'Authorization: Bearer <key>'; create a key with "
            "`mneme keys create --tenant NAME`"
        )
    tenant = services(request).keys.authenticate(credentials.credentials)
    if tenant is None:
        raise Unauthenticated(
            "the API key is unknown or revoked; create a new one with "
            "`mneme keys create --tenant NAME`"
        )
    return Caller(tenant.name)


Services = Annotated[ApiServices, Depends(services)]
Authenticated = Annotated[Caller, Depends(caller)]
