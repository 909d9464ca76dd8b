"""The words Ray users know: @serve.deployment, .options(), .bind(), Request, Response,
@serve.batch, get_replica_context()."""

import functools
import inspect
import json
import urllib.parse

# Decorator options, as Ray spells them. Each is a code default that apps.yaml overrides.
_OPTIONS = ("name", "num_replicas", "max_ongoing_requests", "max_queued_requests",
            "ray_actor_options", "autoscaling_config", "user_config", "health_check_period_s",
            "health_check_timeout_s", "graceful_shutdown_timeout_s")
_ACTOR_OPTIONS = ("num_cpus", "num_gpus")


def _check_options(where, opts):
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise TypeError("%s: unknown option%s %s (known: %s)" % (
            where, "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(_OPTIONS)))

    def integer(key, low):
        v = opts.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError("%s: %s must be an integer >= %d, got %r" % (where, key, low, v))

    def number(key):
        v = opts.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ValueError("%s: %s must be a non-negative number, got %r" % (where, key, v))

    integer("num_replicas", 0)
    integer("max_ongoing_requests", 1)
    integer("max_queued_requests", -1)
    for key in ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s"):
        number(key)
    name = opts.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError("%s: name must be a non-empty string, got %r" % (where, name))
    actor = opts.get("ray_actor_options")
    if actor is not None:
        if not isinstance(actor, dict):
            raise TypeError("%s: ray_actor_options must be a dict" % where)
        unknown = sorted(set(actor) - set(_ACTOR_OPTIONS))
        if unknown:
            raise TypeError("%s: unknown ray_actor_options %s (known: %s)" % (
                where, ", ".join(unknown), ", ".join(_ACTOR_OPTIONS)))
        for key in _ACTOR_OPTIONS:
            v = actor.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError("%s: ray_actor_options.%s must be a non-negative number, got %r"
                                 % (where, key, v))
    auto = opts.get("autoscaling_config")
    if auto is not None and not isinstance(auto, dict):
        raise TypeError("%s: autoscaling_config must be a dict" % where)
    if "user_config" in opts and opts["user_config"] is not None:
        try:
            json.dumps(opts["user_config"])
        except (TypeError, ValueError) as e:
            raise ValueError("%s: user_config must be JSON-serialisable: %s" % (where, e)) from None


class Deployment:
    """A class made a deployment by @serve.deployment."""

    def __init__(self, cls, options):
        self.func_or_class = cls
        self._options = dict(options)

    @property
    def name(self):
        return self._options.get("name") or self.func_or_class.__name__

    def options(self, **kwargs):
        """A copy with these options changed (the class is shared)."""
        _check_options(self.name + ".options()", kwargs)
        merged = dict(self._options)
        merged.update(kwargs)
        return Deployment(self.func_or_class, merged)

    def bind(self, *args, **kwargs):
        """An Application: this deployment with the arguments its constructor gets in every
        replica. An Application among them becomes a DeploymentHandle to that deployment."""
        return Application(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        raise TypeError("%s is a deployment: use %s.bind(...) to build an application"
                        % (self.name, self.name))

    def __repr__(self):
        return "Deployment(%s)" % self.name


def deployment(_cls=None, **options):
    """@serve.deployment or @serve.deployment(num_replicas=2, ...) on a class."""
    def wrap(cls):
        if not inspect.isclass(cls):
            raise TypeError("@serve.deployment goes on a class, not %r" % (cls,))
        _check_options("@serve.deployment on %s" % cls.__name__, options)
        return Deployment(cls, options)

    if _cls is not None:
        if options:
            raise TypeError("@serve.deployment takes keyword options only")
        return wrap(_cls)
    return wrap


class Application:
    """A deployment bound to its constructor's arguments: the ingress of an application, or a
    deployment the ingress (or another) calls."""

    def __init__(self, dep, args, kwargs):
        self.deployment = dep
        self.args = tuple(args)
        self.kwargs = dict(kwargs)

    def __repr__(self):
        return "Application(%s)" % self.deployment.name


def batch(_func=None, *, max_batch_size=10, batch_wait_timeout_s=0.01):
    """@serve.batch(max_batch_size=, batch_wait_timeout_s=) on a method taking a list and
    returning a list of the same length. The replica gathers concurrent calls into one; called
    directly with one item, the method sees a list of one."""
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError("max_batch_size must be an integer >= 1, got %r" % (max_batch_size,))
    if (isinstance(batch_wait_timeout_s, bool) or not isinstance(batch_wait_timeout_s, (int, float))
            or batch_wait_timeout_s < 0):
        raise ValueError("batch_wait_timeout_s must be a number >= 0, got %r" % (batch_wait_timeout_s,))

    def wrap(func):
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def one(self, item):
                return (await func(self, [item]))[0]
        else:
            @functools.wraps(func)
            def one(self, item):
                return func(self, [item])[0]
        one._serve_batch = (func, max_batch_size, float(batch_wait_timeout_s))
        return one

    return wrap(_func) if _func is not None else wrap


class _Headers:
    """A request's headers: a read-only mapping whose keys ignore case."""

    __slots__ = ("_items", "_map")

    def __init__(self, items):
        self._items = list(items)
        self._map = {}
        for k, v in self._items:
            self._map.setdefault(k.lower(), v)

    def __getitem__(self, key):
        return self._map[key.lower()]

    def get(self, key, default=None):
        return self._map.get(key.lower(), default)

    def get_all(self, key):
        key = key.lower()
        return [v for k, v in self._items if k.lower() == key]

    def __contains__(self, key):
        return isinstance(key, str) and key.lower() in self._map

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)

    def keys(self):
        return self._map.keys()

    def items(self):
        return self._map.items()

    def values(self):
        return self._map.values()

    def raw(self):
        return list(self._items)

    def __repr__(self):
        return "Headers(%r)" % (self._items,)


class Request:
    """An HTTP request: method, path, query (dict; query_string the raw text), headers
    (case-insensitive), body (bytes), json(), text(). The parts are read when first used."""

    def __init__(self, method="GET", path="/", query_string="", headers=(), body=b"", _src=None):
        self._src = _src
        self._method = method
        self._path = path
        self._qs = query_string
        self._headers = headers if _src is None else None
        self._body = body
        self._query = None
        if _src is None:
            self._headers = _Headers(headers.items() if isinstance(headers, dict) else headers)

    @classmethod
    def _from_bridge(cls, serve_mod, req):
        r = cls.__new__(cls)
        r._src = (serve_mod, req)
        r._method = r._path = r._qs = r._headers = r._body = r._query = None
        return r

    @property
    def method(self):
        if self._method is None:
            self._method = self._src[0].req_method(self._src[1])
        return self._method

    @property
    def path(self):
        if self._path is None:
            self._path = self._src[0].req_path(self._src[1])
        return self._path

    @property
    def query_string(self):
        if self._qs is None:
            self._qs = self._src[0].req_query(self._src[1])
        return self._qs

    @property
    def query(self):
        """The query string as a dict (the last value of a repeated key)."""
        if self._query is None:
            self._query = dict(urllib.parse.parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    # Starlette's spelling, which Ray handlers use.
    query_params = query

    @property
    def headers(self):
        if self._headers is None:
            self._headers = _Headers(self._src[0].req_headers(self._src[1]))
        return self._headers

    @property
    def body(self):
        if self._body is None:
            self._body = self._src[0].req_body(self._src[1])
        return self._body

    def text(self, encoding="utf-8"):
        return self.body.decode(encoding)

    def json(self):
        """The body parsed as JSON; ValueError when it is not."""
        return json.loads(self.body)

    def __repr__(self):
        return "Request(%s %s)" % (self.method, self.path)


class Response:
    """An answer with its status and headers: Response(body, status=200, headers=None,
    media_type=None). body: bytes, str (UTF-8), or anything else as JSON."""

    __slots__ = ("body", "status_code", "headers", "media_type")

    def __init__(self, body=b"", status=200, headers=None, media_type=None, *, status_code=None):
        self.status_code = int(status_code if status_code is not None else status)
        self.headers = dict(headers or {})
        self.media_type = media_type
        self.body = body

    @property
    def status(self):
        return self.status_code

    def __repr__(self):
        return "Response(%d, %d bytes)" % (self.status_code, len(self.body or b""))


class ReplicaContext:
    """Which replica this is: app_name, deployment, replica_id (Ray's replica_tag)."""

    def __init__(self, app_name, deployment, replica_id):
        self.app_name = app_name
        self.deployment = deployment
        self.replica_id = replica_id

    @property
    def app(self):
        return self.app_name

    @property
    def replica_tag(self):
        return self.replica_id

    def __repr__(self):
        return "ReplicaContext(app=%r, deployment=%r, replica_id=%r)" % (
            self.app_name, self.deployment, self.replica_id)


def get_replica_context():
    """The replica this code runs in (RayServeException outside a replica)."""
    from .exceptions import RayServeException
    try:
        from . import _serve
    except ImportError:
        raise RayServeException("get_replica_context() called outside a replica", 500) from None
    return ReplicaContext(_serve.app(), _serve.deployment(), _serve.replica_id())
