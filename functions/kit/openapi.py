"""What the OpenAPI documents and docs pages of dropwire's apps say beyond Litestar's defaults,
so that a client generated from the schema is right: the one error body as one component that
every documented error response refers to (Litestar's own 400 describes {status_code, detail,
extra}, which no dropwire app answers), the request bodies of raw uploads (read from the
request, so Litestar cannot see them), and the Swagger UI page with its assets served from the
installed swagger-ui-py package instead of a public CDN (a blank page offline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import swagger_ui
from litestar import Router
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema, SecurityScheme
from litestar.static_files import create_static_files_router

from dropwire.functions.kit.errors import ErrorBody

# What each error status means, the same in every app.
ERROR_MEANINGS = {
    400: "The request is malformed: a parameter, the body or an id is invalid; the message names it.",
    401: "No valid bearer token (only when API tokens are configured).",
    404: "The named entity, object or function does not exist.",
    409: "The write conflicts with the current state, or the handler it fired refused it.",
    413: "The body is larger than the upload limit.",
    415: "The upload's format is not one this endpoint reads.",
    429: "As many requests as allowed are running; Retry-After says when to come back.",
    422: "The content cannot be used; the message names the line, column, series or index at fault.",
    500: "An unexpected error (logged).",
    502: "The service this request is forwarded to did not answer.",
    503: "The service is shutting down, or its database is in use or closed.",
    504: "Timed out waiting for the computation.",
}

DOCS_PATH = "/schema"
ASSETS_PATH = f"{DOCS_PATH}/assets"
SWAGGER_ASSETS = Path(swagger_ui.__file__).parent / "static"


def error_responses(*statuses: int, meanings: dict[int, str] | None = None) -> dict[int, ResponseSpec]:
    """The documented error answers of an operation, each the one ErrorBody component;
    ``meanings`` says more than ERROR_MEANINGS for some statuses of this API."""
    said = {**ERROR_MEANINGS, **(meanings or {})}
    return {status: ResponseSpec(data_container=ErrorBody, description=said[status], generate_examples=False)
            for status in statuses}


def body_operation(description: str, content: dict[str, Schema]) -> type[Operation]:
    """An Operation class documenting a required request body the handler reads from the
    request itself (so Litestar cannot see it): ``content`` maps each media type to its schema."""
    body = RequestBody(content={media: OpenAPIMediaType(schema=schema) for media, schema in content.items()},
                       description=description, required=True)

    @dataclass
    class BodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return BodyOperation


def upload_operation(description: str, media_types: tuple[str, ...] = ("application/octet-stream",),
                     multipart: bool = True, form_fields: dict[str, tuple[Schema, bool]] | None = None) -> type[Operation]:
    """An Operation class documenting an upload read from the request itself: the raw bytes
    as the body (as one of ``media_types``), or with ``multipart`` a form with the file in
    field ``file`` and ``form_fields`` beside it (name: (schema, required))."""
    content = {media: Schema(type=OpenAPIType.STRING, content_media_type=media) for media in media_types}
    if multipart:
        fields = {"file": (Schema(type=OpenAPIType.STRING, content_media_type="application/octet-stream"), True),
                  **(form_fields or {})}
        content["multipart/form-data"] = Schema(type=OpenAPIType.OBJECT, properties={n: f for n, (f, _) in fields.items()},
                                                required=[n for n, (_, required) in fields.items() if required])
    return body_operation(description, content)


# Routes open to anyone say so with this (an empty requirement) beside a bearer-token app's default.
NO_TOKEN: list[dict[str, list[str]]] = [{}]


def openapi_config(title: str, version: str, *, bearer: bool = False) -> OpenAPIConfig:
    """/schema (the document) and /schema/swagger, whose script, styles and icon are served by
    assets_router(): the page needs nothing off the machine. ``bearer``: every route needs a
    bearer token (but those marked NO_TOKEN), which the page's Authorize button then takes."""
    swagger = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>")
    if not bearer:
        return OpenAPIConfig(title=title, version=version, path=DOCS_PATH, render_plugins=[swagger])
    return OpenAPIConfig(title=title, version=version, path=DOCS_PATH, render_plugins=[swagger], security=[{"bearer": []}],
                         components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}))


def assets_router() -> Router:
    return create_static_files_router(path=ASSETS_PATH, directories=[SWAGGER_ASSETS], name="swagger-assets")
