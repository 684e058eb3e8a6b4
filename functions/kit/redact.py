"""Credentials kept out of what dropwire prints: in a URL, the password of its userinfo (all of
a userinfo without one, as in https://TOKEN@host) and every credential-looking query or
fragment value are masked; scheme, user, host, port and path stay readable. Used for
`dropwire settings`, for stored delivery errors, and as a filter on every log line."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

MASK = "****"

# Query parameter names that carry credentials: token, api_key, secret, password, pwd,
# signature/sig, credential, auth, session, and every AWS presigned X-Amz-* parameter.
_CREDENTIAL = re.compile(r"token|key|secret|passw|pwd|sig|credential|auth|session|^x-amz-", re.IGNORECASE)
# A URL inside free text: scheme://, up to whitespace, a quote or an angle bracket.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def _mask_pairs(pairs: str) -> str:
    masked = []
    for pair in pairs.split("&"):
        name, eq, value = pair.partition("=")
        if eq and value and _CREDENTIAL.search(unquote_plus(name)):
            pair = f"{name}={MASK}"
        elif "://" in value:  # a URL passed on (?next=https://user:pw@host/)
            pair = f"{name}={mask_url(value)}"
        masked.append(pair)
    return "&".join(masked)


def mask_url(url: str) -> str:
    """`url` with its credentials masked; a string that is not scheme://... comes back as is.
    Text surgery rather than parse-and-rebuild, so nothing else of the URL changes."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    tail, hash_, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    return f"{scheme}://{authority}{path}{question}{_mask_pairs(query)}{hash_}{_mask_pairs(fragment)}"


def mask_urls(text: str) -> str:
    """Every URL inside `text` masked (a log line, an error message)."""
    return _URL.sub(lambda m: mask_url(m.group(0)), text) if "://" in text else text


class MaskUrls(logging.Filter):
    """A handler filter: each record's message and traceback with its URLs masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_urls(record.exc_text)
        return True


def mask_logs(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of `logger` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, MaskUrls) for f in handler.filters):
            handler.addFilter(MaskUrls())
