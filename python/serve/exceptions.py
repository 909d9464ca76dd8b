"""The errors a handle call raises (Ray's serve.exceptions)."""


class RayServeException(Exception):
    """A call through a handle failed: status is the callee's (or the system's) HTTP status,
    message its answer's body as text."""

    def __init__(self, message="", status=500):
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self):
        return "%d: %s" % (self.status, self.message) if self.status else self.message


class BackPressureError(RayServeException):
    """The callee's queue is full (503): retry later."""


def from_status(status, body):
    """The exception for a failed call's status and body."""
    message = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    cls = BackPressureError if status == 503 else RayServeException
    return cls(message.strip(), status)
