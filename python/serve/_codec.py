"""Values across handles: bytes travel as they are, str as UTF-8, anything else as JSON. The
receiver decodes a body as JSON when it parses as JSON, else keeps the bytes."""

import json

# A JSON text starts with one of these (after whitespace); anything else is bytes at once,
# without trying a parse (a float vector, a packed message).
_JSON_START = frozenset(b'{["-0123456789tfn \t\r\n')


def encode(value):
    """The body that carries value."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def decode(body):
    """The value a body carries: its JSON when it parses as JSON, else the bytes."""
    if not body or body[0] not in _JSON_START:
        return body
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return body
