"""Slack's HTTP requests: the signature is checked on the raw bytes before anything is parsed.

Slack signs each request with the app's signing secret: `X-Slack-Signature`
is `v0=` and the hex HMAC-SHA256 of `v0:{timestamp}:{raw body}`, and
`X-Slack-Request-Timestamp` is Unix time in ASCII digits, within 5 minutes
of now. `read_signed` checks both before a byte of the body is decoded:

- The headers first, without reading the body: a missing signature, a
  timestamp that is not 1-12 ASCII digits (`str.isdigit()` and `int()`
  accept `²`, `①`, `١٢٣`, ` 12 `, `+1`, so neither is used), or one outside
  the 5 minutes is refused at once.
- The body is read as a stream and hashed as it arrives, so a huge one
  costs no memory: only the first `MAX_BODY` bytes are kept. A body longer
  than `MAX_HASHED` is not read to its end and never counts as signed.
- The digests are compared in constant time, as bytes (a non-ASCII header
  can neither match nor raise).

Every request that fails gets 401 and nothing else: no decoding, no JSON, no
database. slack_sdk's `SignatureVerifier` is not strict enough to do this
job: it takes the timestamp through `int()`, decodes the body as UTF-8 before
hashing (bad bytes raise), and raises on a non-ASCII signature.

Only then is a signed body parsed (`parse`): strict UTF-8, a size limit (413),
JSON or form fields as bolt reads them, nesting no deeper than `MAX_DEPTH`
(deep nesting makes Python's JSON parser, and bolt after it, recurse), and
the shape bolt indexes into (`slack_app.well_formed`). Anything else is a 400 with a plain message,
never a 500. Socket Mode does not come through here: the websocket is
authenticated by the app token.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Callable

from aiohttp import web

MAX_BODY = 1 << 20  # 1 MiB: Slack's largest payloads (a view with 100 blocks) are far smaller
MAX_HASHED = 16 << 20  # read (and hashed) at most this much of a body to decide whether it is signed
MAX_DEPTH = 64  # Slack's deepest payloads (rich text in blocks in a view) nest about 15 levels
MAX_AGE_S = 300  # Slack's 5 minutes, either way


def _refused(why: str) -> web.Response:
    # The reason is logged nowhere and told to nobody but the sender; it helps an operator
    # setting up the app see which of the secret, the clock or a proxy is wrong.
    return web.Response(status=401, text=f"invalid request: {why}")


def _timestamp(value: str | None, now: float) -> bytes | None:
    """The timestamp header as bytes if it is 1-12 ASCII digits within MAX_AGE_S of now, else None."""
    if not value or len(value) > 12 or not value.isascii() or not value.isdigit():
        return None
    return value.encode() if abs(now - int(value)) <= MAX_AGE_S else None


async def read_signed(request: web.Request, secret: str,
                      clock: Callable[[], float] = time.time) -> bytes | web.Response:
    """The raw body if the request carries a valid Slack signature, else a 401 response."""
    if not secret:  # an HMAC with an empty key is one anybody can make
        return _refused("no signing secret is configured (SLACK_SIGNING_SECRET)")
    ts = _timestamp(request.headers.get("X-Slack-Request-Timestamp"), clock())
    signature = request.headers.get("X-Slack-Signature", "")
    if ts is None:
        return _refused("missing, malformed or stale X-Slack-Request-Timestamp")
    if not signature.startswith("v0=") or not signature.isascii():
        return _refused("missing or malformed X-Slack-Signature")
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        # Slack signs the bytes it sends and never compresses them; aiohttp would hand us the
        # bytes after decompressing, which are not what was signed (and may not decompress).
        return _refused("a compressed body cannot be verified")
    mac = hmac.new(secret.encode(), b"v0:" + ts + b":", hashlib.sha256)
    kept, size = [], 0
    try:
        async for chunk in request.content.iter_chunked(64 << 10):
            size += len(chunk)
            if size > MAX_HASHED:
                return _refused(f"body over {MAX_HASHED} bytes, not verified")
            mac.update(chunk)
            if size <= MAX_BODY:
                kept.append(chunk)
    except (web.RequestPayloadError, web.HTTPException, ConnectionResetError) as e:  # cut short, bad framing
        return _refused(f"the body could not be read ({type(e).__name__})")
    if not hmac.compare_digest(b"v0=" + mac.hexdigest().encode(), signature.encode("ascii")):
        return _refused("signature mismatch")
    if size > MAX_BODY:
        return web.Response(status=413, text=f"the request body is {size} bytes; the limit is {MAX_BODY}")
    return b"".join(kept)


def _too_deep(value, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests dicts and lists deeper than `limit`; iterative, so it cannot recurse itself."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _bad(why: str) -> web.Response:
    return web.Response(status=400, text=f"the request body is not a Slack request ({why})")


def parse(raw: bytes, request: web.Request, well_formed: Callable[[dict], bool]):
    """The bolt request for a signed body, or a 400 response saying why it cannot be one."""
    from slack_bolt.request.async_request import AsyncBoltRequest

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return web.Response(status=400, text="the request body is not UTF-8")
    try:
        # Bolt parses the body in its constructor (JSON, or form fields with a `payload` of JSON)
        # and reads ids out of it, indexing into what it expects to find there.
        bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=request.headers)
    except RecursionError:  # Python's JSON parser gives up past about 1000 levels, cleanly
        return _bad(f"JSON nested deeper than {MAX_DEPTH} levels")
    except ValueError:  # not JSON (JSONDecodeError), or a number past int's digit limit
        return _bad("bad JSON")
    except (LookupError, AttributeError, TypeError):
        return _bad("bad JSON, charset or shape")
    if _too_deep(bolt_request.body):  # under the parser's limit, but bolt and our listeners may recurse on it
        return _bad(f"JSON nested deeper than {MAX_DEPTH} levels")
    if not well_formed(bolt_request.body):
        return _bad("malformed payload")
    return bolt_request
