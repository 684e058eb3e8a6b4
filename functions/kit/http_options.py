"""The Allow header of every dropwire app's automatic OPTIONS answer names every method its
path serves. Litestar 2 builds that answer when the first handler of a path is registered and
keeps its methods (litestar#4169, fixed only in v3): OPTIONS /api/use-cases said
"OPTIONS, POST" while GET is served too."""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope


async def complete_allow_header(message: Message, scope: Scope) -> None:
    """A ``before_send`` hook: rewrite Allow on OPTIONS answers from the app's route map."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    headers = MutableScopeHeaders(message)
    if "allow" not in headers:
        return
    template = scope.get("path_template")
    for route in Litestar.from_scope(scope).routes:
        # The route Litestar rebuilt with every handler of the path knows all of its methods.
        if isinstance(route, HTTPRoute) and route.path_format == template:
            headers["allow"] = ", ".join(sorted(route.methods))
            return
