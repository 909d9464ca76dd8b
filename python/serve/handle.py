"""Handles: calling another deployment's methods from a handler (Ray's DeploymentHandle).

    resp = self.ranker.rank.remote(x)     # starts the call at once
    value = await resp                    # in async code (the loop is not blocked)
    value = resp.result(timeout_s=5)      # in plain code (the GIL is released meanwhile)

Values are encoded as serve._codec says; a failed call raises RayServeException."""

import asyncio
import concurrent.futures
import threading

from . import _codec, _context
from .exceptions import RayServeException, from_status


def _serve():
    from . import _serve as mod  # the bridge's extension (or the tests' fake)
    return mod


def _call_error(e):
    """The RayServeException for a serve._serve.CallError(status, message)."""
    args = tuple(e.args) + (500, "")
    try:
        status = int(args[0])
    except (TypeError, ValueError):
        return RayServeException(str(e), 500)
    return from_status(status, args[1] if len(e.args) > 1 else "")


class DeploymentResponse:
    """The answer of one call: await it, or .result()."""

    __slots__ = ("_fut", "_lock", "_done", "_value", "_error", "__weakref__")

    def __init__(self, fut):
        self._fut = fut
        self._lock = threading.Lock()
        self._done = False
        self._value = None
        self._error = None

    def _wait(self):
        with self._lock:
            if not self._done:
                fut, self._fut = self._fut, None
                mod = _serve()
                try:
                    if isinstance(fut, RayServeException):
                        raise fut  # the call did not start
                    status, body = mod.wait(fut)
                except RayServeException as e:
                    self._error = e
                except mod.CallError as e:
                    self._error = _call_error(e)
                except Exception as e:  # noqa: BLE001 - the call failed to complete
                    self._error = RayServeException(str(e), 500)
                else:
                    if 200 <= status < 300:
                        self._value = _codec.decode(body)
                    else:
                        self._error = from_status(status, body)
                self._done = True
        if self._error is not None:
            raise self._error
        return self._value

    def result(self, timeout_s=None):
        """The call's value; raises RayServeException when it failed, TimeoutError past
        timeout_s (the call goes on)."""
        if timeout_s is None or self._done:
            return self._wait()
        f = _context.wait_pool().submit(self._wait)
        try:
            return f.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError("the call did not answer within %s s" % timeout_s) from None

    def __await__(self):
        if self._done:
            return self._wait()
        return (yield from asyncio.get_running_loop().run_in_executor(
            _context.wait_pool(), self._wait).__await__())

    def cancel(self):
        """Gives the call up."""
        with self._lock:
            if not self._done and self._fut is not None:
                fut, self._fut = self._fut, None
                self._done = True
                self._error = RayServeException("cancelled", 499)
                if not isinstance(fut, BaseException):
                    _serve().cancel(fut)

    def __del__(self):
        try:
            if not self._done and self._fut is not None and not isinstance(self._fut, BaseException):
                _serve().cancel(self._fut)
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass


class DeploymentResponseGenerator:
    """A streaming call's pieces: iterate (plain code) or async-iterate (async code)."""

    def __init__(self, fut):
        self._fut = fut
        self._end = False

    def _next(self):
        if self._end:
            return None
        mod = _serve()
        try:
            piece = mod.next(self._fut)
        except mod.CallError as e:
            self._end = True
            raise _call_error(e) from None
        if piece is None:
            self._end = True
        return piece

    def __iter__(self):
        return self

    def __next__(self):
        piece = self._next()
        if piece is None:
            raise StopIteration
        return piece

    def __aiter__(self):
        return self

    async def __anext__(self):
        piece = await asyncio.get_running_loop().run_in_executor(_context.wait_pool(), self._next)
        if piece is None:
            raise StopAsyncIteration
        return piece

    def cancel(self):
        if not self._end:
            self._end = True
            _serve().cancel(self._fut)

    def __del__(self):
        try:
            if not self._end:
                _serve().cancel(self._fut)
        except Exception:  # noqa: BLE001
            pass


class _Method:
    __slots__ = ("_handle", "_name")

    def __init__(self, handle, name):
        self._handle = handle
        self._name = name

    def remote(self, *args):
        """Starts the call with one argument (or none: an empty body)."""
        if len(args) > 1:
            raise TypeError("%s.%s.remote() takes one argument (pack several in a dict or list)"
                            % (self._handle.deployment_name, self._name))
        data = _codec.encode(args[0]) if args else b""
        req = _context.current_request.get()
        mod = _serve()
        try:
            if self._handle._stream:
                return DeploymentResponseGenerator(
                    mod.call_stream(req, self._handle._target, self._name, data))
            return DeploymentResponse(mod.call(req, self._handle._target, self._name, data))
        except mod.CallError as e:
            # Not started (no such deployment or method, a full queue): raised when awaited,
            # as Ray does.
            err = _call_error(e)
            if self._handle._stream:
                raise err from None
            return DeploymentResponse(err)


class DeploymentHandle:
    """Calls the deployment deployment_name: handle.method.remote(x), handle.remote(x) for
    __call__, handle.options(stream=True) for a streaming answer. With app_name, that
    application's deployment (serve.get_deployment_handle); app_name with an empty
    deployment_name: that application's ingress (serve.get_app_handle)."""

    def __init__(self, deployment_name, stream=False, app_name=None):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._stream = stream
        # What the runtime calls: "Deployment" (bound, in our application) or "APP/Deployment".
        self._target = deployment_name if app_name is None else "%s/%s" % (app_name, deployment_name)

    def options(self, *, stream=None):
        return DeploymentHandle(self.deployment_name, self._stream if stream is None else bool(stream),
                                self.app_name)

    def remote(self, *args):
        return _Method(self, "__call__").remote(*args)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Method(self, name)

    def __repr__(self):
        if self.app_name is None:
            return "DeploymentHandle(%r)" % self.deployment_name
        if not self.deployment_name:
            return "DeploymentHandle(app_name=%r)" % self.app_name
        return "DeploymentHandle(%r, app_name=%r)" % (self.deployment_name, self.app_name)


def _check_name(what, name):
    if not isinstance(name, str) or not name or "/" in name or ">" in name or any(
            c <= " " or c > "~" for c in name):
        raise ValueError("%s must be a non-empty name of printable characters without spaces, '/' or '>': %r"
                         % (what, name))


def get_deployment_handle(deployment_name, app_name=None):
    """A handle to deployment_name of application app_name (Ray's serve.get_deployment_handle):
    any application of the config, C or Python, without binding it (app_name None: this
    replica's application). A missing application or deployment raises RayServeException 404
    when the call's answer is awaited."""
    _check_name("deployment_name", deployment_name)
    if app_name is None:
        app_name = _serve().app()
    _check_name("app_name", app_name)
    return DeploymentHandle(deployment_name, app_name=app_name)


def get_app_handle(app_name):
    """A handle to the ingress deployment of application app_name (Ray's serve.get_app_handle):
    handle.remote(x) calls its __call__ with x (not an HTTP request)."""
    _check_name("app_name", app_name)
    return DeploymentHandle("", app_name=app_name)
