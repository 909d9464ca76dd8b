"""Unit tests of the serve Python package against a fake serve._serve (no bridge needed).

    /usr/bin/python3 tests/python/test_serve.py"""

import json
import os
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(SRCDIR, "python"), HERE]

import fake_serve  # noqa: E402

FAKE = fake_serve.install()

import serve  # noqa: E402
from serve import _runtime  # noqa: E402
from serve.exceptions import BackPressureError, RayServeException  # noqa: E402

Req, Resp = fake_serve.Request, fake_serve.Response

try:
    import numpy  # noqa: F401
    HAVE_NUMPY = True
except ImportError:
    HAVE_NUMPY = False


def write_module(src, name="mod"):
    d = tempfile.mkdtemp(prefix="serve-test-")
    path = os.path.join(d, name + ".py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(src))
    sys.modules.pop(name, None)
    return path


def start(src, symbol="app", deployment=None, args_json=None, user_config_json=None, name="mod"):
    """load() a module, init() its ingress (or deployment): the replica."""
    described = _runtime.load(write_module(src, name), symbol)
    return _runtime.init(deployment or described[0]["name"], args_json, user_config_json)


def call(replica, method="__call__", req=None):
    resp = Resp()
    _runtime.invoke(replica, method, req or Req(), resp)
    return resp


class Base(unittest.TestCase):
    def setUp(self):
        FAKE.logs.clear()
        FAKE.calls.clear()
        FAKE.routes.clear()


class DecoratorTest(Base):
    def test_with_and_without_arguments(self):
        @serve.deployment
        class A:
            pass

        @serve.deployment(num_replicas=2, max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.5},
                          user_config={"k": 1}, name="Bee")
        class B:
            pass

        self.assertIsInstance(A, serve.Deployment)
        self.assertEqual(A.name, "A")
        self.assertEqual(B.name, "Bee")
        self.assertEqual(B._options["num_replicas"], 2)

    def test_unknown_options_are_named(self):
        with self.assertRaises(TypeError) as cm:
            @serve.deployment(num_replica=2, colour="red")
            class A:
                pass
        self.assertIn("colour", str(cm.exception))
        self.assertIn("num_replica", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            serve.deployment(ray_actor_options={"memory": 1})(type("C", (), {}))
        self.assertIn("memory", str(cm.exception))

    def test_bad_values(self):
        for opts in ({"num_replicas": -1}, {"max_ongoing_requests": 0}, {"num_replicas": "2"},
                     {"ray_actor_options": {"num_gpus": -1}}, {"user_config": {"x": object()}},
                     {"health_check_period_s": True}):
            with self.assertRaises((TypeError, ValueError), msg=opts):
                serve.deployment(**opts)(type("C", (), {}))

    def test_options_copy(self):
        @serve.deployment(num_replicas=1)
        class A:
            pass

        B = A.options(num_replicas=3, name="B")
        self.assertEqual(A._options["num_replicas"], 1)
        self.assertEqual(B._options["num_replicas"], 3)
        self.assertIs(B.func_or_class, A.func_or_class)
        with self.assertRaises(TypeError):
            A.options(bogus=1)

    def test_deployment_not_callable(self):
        @serve.deployment
        class A:
            pass

        with self.assertRaises(TypeError):
            A()


GRAPH = """
from serve import deployment, batch

@deployment(num_replicas=2, max_ongoing_requests=8, max_queued_requests=10,
            ray_actor_options={"num_cpus": 1, "num_gpus": 0.5}, user_config={"t": 1},
            health_check_period_s=3, health_check_timeout_s=9, graceful_shutdown_timeout_s=4)
class Ingress:
    def __init__(self, left, right, n=0):
        self.left, self.right, self.n = left, right, n
    def __call__(self, request):
        return {"n": self.n}
    def other(self, x):
        return x
    def _private(self):
        pass
    def reconfigure(self, cfg):
        self.cfg = cfg
    def check_health(self):
        pass

@deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 4})
class Left:
    def __init__(self, leaf):
        self.leaf = leaf
    @batch(max_batch_size=8, batch_wait_timeout_s=0.5)
    def embed(self, xs):
        return xs
    def go(self, x):
        return x

@deployment
class Leaf:
    async def __call__(self, x):
        return x

leaf = Leaf.bind()
app = Ingress.bind(Left.bind(leaf), [leaf], n=5)
not_app = Leaf
number = 3
"""


class LoadTest(Base):
    def test_graph(self):
        out = _runtime.load(write_module(GRAPH, "graphmod"), "app")
        self.assertEqual([d["name"] for d in out], ["Ingress", "Left", "Leaf"])
        ing, left, leaf = out
        self.assertEqual(ing["handlers"], ["__call__", "other"])
        self.assertEqual(ing["binds"], ["Left", "Leaf"])
        self.assertEqual(ing["options"], {
            "num_replicas": 2, "max_ongoing_requests": 8, "max_queued_requests": 10,
            "health_check_period_s": 3, "health_check_timeout_s": 9, "graceful_shutdown_timeout_s": 4,
            "num_cpus": 1, "num_gpus": 0.5})
        self.assertEqual(ing["user_config"], {"t": 1})
        self.assertIsNone(ing["autoscaling_config"])
        self.assertEqual(left["handlers"], ["go"])
        self.assertEqual(left["batched"], [{"name": "embed", "max_batch_size": 8, "batch_wait_timeout_s": 0.5}])
        self.assertEqual(left["binds"], ["Leaf"])
        self.assertEqual(left["autoscaling_config"], {"min_replicas": 1, "max_replicas": 4})
        self.assertEqual(left["options"]["num_replicas"], None)
        self.assertEqual(leaf["binds"], [])
        json.dumps(out)  # the bridge reads it as plain data

        r = _runtime.init("Ingress", None, '{"t": 2}')
        self.assertIsInstance(r.instance.left, serve.DeploymentHandle)
        self.assertEqual(r.instance.left.deployment_name, "Left")
        self.assertEqual(r.instance.right[0].deployment_name, "Leaf")
        self.assertEqual(r.instance.cfg, {"t": 2})
        self.assertEqual(json.loads(call(r).body), {"n": 5})
        r = _runtime.init("Ingress", '{"n": 7}', None)  # apps.yaml args: keyword arguments
        self.assertEqual(json.loads(call(r).body), {"n": 7})
        with self.assertRaises(LookupError):
            _runtime.init("Nope", None, None)

    def test_errors_name_module_and_symbol(self):
        path = write_module(GRAPH, "graphmod2")
        with self.assertRaises(LookupError) as cm:
            _runtime.load(path, "missing")
        self.assertIn(path, str(cm.exception))
        self.assertIn("'missing'", str(cm.exception))
        self.assertIn("app", str(cm.exception))  # what the module does have
        with self.assertRaises(TypeError) as cm:
            _runtime.load(path, "not_app")
        self.assertIn("bind", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            _runtime.load(path, "number")
        self.assertIn("not an application", str(cm.exception))
        with self.assertRaises(SyntaxError):
            _runtime.load(write_module("def (:\n", "broken"), "app")

    def test_duplicate_names(self):
        src = """
        from serve import deployment
        @deployment
        class A:
            def __init__(self, *a): pass
        app = A.options(name="Top").bind(A.bind(1), A.bind(2))
        """
        with self.assertRaises(ValueError) as cm:
            _runtime.load(write_module(src, "dup"), "app")
        self.assertIn("'A'", str(cm.exception))

    def test_example_pyecho(self):
        out = _runtime.load(os.path.join(SRCDIR, "examples", "python", "pyecho.py"), "app")
        self.assertEqual([d["name"] for d in out], ["PyEcho"])
        self.assertEqual(out[0]["handlers"], ["__call__"])

    @unittest.skipUnless(HAVE_NUMPY, "python3-numpy is not installed")
    def test_example_pysearch(self):
        out = _runtime.load(os.path.join(SRCDIR, "examples", "python", "pysearch.py"), "app")
        self.assertEqual([d["name"] for d in out], ["Pipeline", "Embedder", "Ranker"])
        self.assertEqual(out[0]["binds"], ["Embedder", "Ranker"])
        self.assertEqual(out[0]["options"]["num_replicas"], 3)
        self.assertEqual(out[1]["batched"], [{"name": "embed", "max_batch_size": 16, "batch_wait_timeout_s": 0.002}])
        self.assertEqual(out[1]["options"]["max_ongoing_requests"], 16)
        self.assertEqual(out[2]["handlers"], ["rank"])


HANDLERS = """
import asyncio, threading
from serve import deployment, Response, batch

@deployment
class H:
    def __init__(self):
        self.calls = 0
    def __call__(self, request):
        return request.body
    def text(self, request):
        return "héllo"
    def data(self, request):
        return {"method": request.method, "path": request.path, "q": request.query,
                "qs": request.query_string, "ct": request.headers.get("CONTENT-TYPE"),
                "json": request.json() if request.body else None}
    def none(self, request):
        return None
    def resp(self, request):
        return Response(b"gone", status=410, headers={"X-A": "1"}, media_type="text/x-test")
    def resp_json(self, request):
        return Response({"a": 1}, status=201)
    def fail(self, request):
        raise ValueError("bad input")
    def unencodable(self, request):
        return {"x": object()}
    async def aplain(self, request):
        await asyncio.sleep(0)
        return {"async": True, "thread": threading.current_thread().name}
    async def afail(self, request):
        raise KeyError("k")
    def gen(self, request):
        for i in range(3):
            yield "piece%d\\n" % i
    async def agen(self, request):
        for i in range(3):
            await asyncio.sleep(0)
            yield {"i": i}
    def gen_fail(self, request):
        yield b"one"
        raise RuntimeError("midway")
    def noarg(self):
        return "none needed"
    def value(self, x):
        return {"got": repr(x), "type": type(x).__name__}
    @batch(max_batch_size=4)
    def double(self, xs):
        return [x * 2 for x in xs]
    @batch
    def short(self, xs):
        return xs[:-1]
    @batch(max_batch_size=4)
    async def adouble(self, xs):
        return [Response(str(x * 2), status=202) for x in xs]

app = H.bind()
"""


class InvokeTest(Base):
    @classmethod
    def setUpClass(cls):
        cls.r = start(HANDLERS, name="handlersmod")

    def test_bytes_echo(self):
        resp = call(self.r, req=Req("POST", body=b"\x00\xffraw"))
        self.assertEqual((resp.status, resp.body), (200, b"\x00\xffraw"))
        self.assertIsNone(resp.header("content-type"))

    def test_str(self):
        resp = call(self.r, "text")
        self.assertEqual(resp.body, "héllo".encode())
        self.assertEqual(resp.header("Content-Type"), "text/plain; charset=utf-8")

    def test_request_and_dict(self):
        req = Req("POST", "/app/x", "a=1&b=two&a=3&e=", [("Content-Type", "application/json")], b'{"k": [1]}')
        resp = call(self.r, "data", req)
        self.assertEqual(resp.header("content-type"), "application/json")
        self.assertEqual(json.loads(resp.body), {
            "method": "POST", "path": "/app/x", "q": {"a": "3", "b": "two", "e": ""},
            "qs": "a=1&b=two&a=3&e=", "ct": "application/json", "json": {"k": [1]}})

    def test_none_is_empty_200(self):
        resp = call(self.r, "none")
        self.assertEqual((resp.status, resp.body, resp.headers), (200, b"", []))

    def test_response(self):
        resp = call(self.r, "resp")
        self.assertEqual((resp.status, resp.body), (410, b"gone"))
        self.assertEqual(resp.header("x-a"), "1")
        self.assertEqual(resp.header("content-type"), "text/x-test")
        resp = call(self.r, "resp_json")
        self.assertEqual((resp.status, json.loads(resp.body)), (201, {"a": 1}))
        self.assertEqual(resp.header("content-type"), "application/json")

    def test_exception_is_500_logged_once(self):
        resp = call(self.r, "fail")
        self.assertEqual(resp.status, 500)
        self.assertEqual(resp.body, b"ValueError: bad input\n")
        self.assertNotIn(b"Traceback", resp.body)
        self.assertEqual(len(FAKE.logs), 1)
        level, msg = FAKE.logs[0]
        self.assertEqual(level, 3)
        self.assertIn("Traceback", msg)
        self.assertIn("H.fail", msg)
        self.assertIn('raise ValueError("bad input")', msg)

    def test_unencodable_result_is_500_before_any_write(self):
        resp = call(self.r, "unencodable")
        self.assertEqual(resp.status, 500)
        self.assertTrue(resp.body.startswith(b"TypeError"))
        self.assertIsNone(resp.header("content-type") if resp.header("content-type") != "text/plain; charset=utf-8" else None)

    def test_async(self):
        resp = call(self.r, "aplain")
        body = json.loads(resp.body)
        self.assertTrue(body["async"])
        self.assertEqual(body["thread"], "serve-asyncio")
        resp = call(self.r, "afail")
        self.assertEqual((resp.status, resp.body), (500, b"KeyError: 'k'\n"))

    def test_async_runs_concurrently(self):
        src = """
        import asyncio, time
        from serve import deployment
        @deployment
        class Slow:
            async def __call__(self, request):
                t0 = time.monotonic()
                await asyncio.sleep(0.3)
                return {"t0": t0, "t1": time.monotonic()}
        app = Slow.bind()
        """
        r = start(src, name="slowmod")
        out = []
        threads = [threading.Thread(target=lambda: out.append(json.loads(call(r).body))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a, b = out
        self.assertLess(max(a["t0"], b["t0"]), min(a["t1"], b["t1"]), "the two requests overlap")

    def test_generator_streams(self):
        resp = call(self.r, "gen")
        self.assertEqual(resp.pieces, [b"piece0\n", b"piece1\n", b"piece2\n"])
        self.assertEqual(resp.header("content-type"), "text/plain; charset=utf-8")
        resp = call(self.r, "agen")
        self.assertEqual(resp.pieces, [b'{"i":0}\n', b'{"i":1}\n', b'{"i":2}\n'])
        self.assertEqual(resp.header("content-type"), "application/x-ndjson")

    def test_generator_failure_and_client_gone(self):
        resp = call(self.r, "gen_fail")
        self.assertEqual(resp.pieces, [b"one"])
        self.assertEqual(len(FAKE.logs), 1)
        self.assertIn("RuntimeError: midway", FAKE.logs[0][1])
        resp = Resp()
        import errno
        resp.fail_write = OSError(errno.ECANCELED, "gone")
        _runtime.invoke(self.r, "gen", Req(), resp)
        self.assertEqual(resp.pieces, [])
        self.assertTrue(all(level == 7 for level, _ in FAKE.logs[1:]))

    def test_no_argument_method_and_missing_method(self):
        self.assertEqual(call(self.r, "noarg").body, b"none needed")
        self.assertEqual(call(self.r, "nope").status, 404)

    def test_handle_call_gets_decoded_value(self):
        resp = call(self.r, "value", Req(body=b'{"a": 1}', caller="Other"))
        self.assertEqual(json.loads(resp.body), {"got": "{'a': 1}", "type": "dict"})
        resp = call(self.r, "value", Req(body=b"plain text", caller="Other"))
        self.assertEqual(json.loads(resp.body), {"got": "b'plain text'", "type": "bytes"})

    def test_batch(self):
        reqs = [Req(body=str(i).encode(), caller="X") for i in range(3)]
        resps = [Resp() for _ in reqs]
        _runtime.invoke_batch(self.r, "double", reqs, resps)
        self.assertEqual([r.body for r in resps], [b"0", b"2", b"4"])
        resps = [Resp() for _ in reqs]
        _runtime.invoke_batch(self.r, "adouble", reqs, resps)
        self.assertEqual([(r.status, r.body) for r in resps], [(202, b"0"), (202, b"2"), (202, b"4")])

    def test_batch_wrong_length_fails_all_logged_once(self):
        reqs = [Req(body=b"1", caller="X") for _ in range(3)]
        resps = [Resp() for _ in reqs]
        _runtime.invoke_batch(self.r, "short", reqs, resps)
        self.assertEqual([r.status for r in resps], [500] * 3)
        self.assertEqual(len(FAKE.logs), 1)

    def test_batch_called_directly_takes_one(self):
        self.assertEqual(self.r.instance.double(21), 42)


class LifecycleTest(Base):
    SRC = """
    from serve import deployment
    @deployment(user_config={"v": 1})
    class C:
        def __init__(self, boom=False):
            if boom:
                raise RuntimeError("cannot start")
            self.v = None
            self.healthy = True
        def reconfigure(self, cfg):
            if cfg.get("bad"):
                raise ValueError("bad config")
            self.v = cfg["v"]
        def check_health(self):
            if not self.healthy:
                raise RuntimeError("sick")
        def __call__(self, request):
            return {"v": self.v}
    app = C.bind()
    boom = C.bind(boom=True)
    """

    def test_reconfigure_and_health(self):
        r = start(self.SRC, user_config_json='{"v": 1}', name="lifemod")
        self.assertEqual(json.loads(call(r).body), {"v": 1})
        _runtime.reconfigure(r, '{"v": 2}')
        self.assertEqual(json.loads(call(r).body), {"v": 2})
        with self.assertRaises(ValueError):
            _runtime.reconfigure(r, '{"bad": true}')
        _runtime.check_health(r)
        r.instance.healthy = False
        with self.assertRaises(RuntimeError):
            _runtime.check_health(r)
        _runtime.destroy(r)
        self.assertIsNone(r.instance)

    def test_init_failure_raises(self):
        with self.assertRaises(RuntimeError) as cm:
            start(self.SRC, symbol="boom", name="lifemod2")
        self.assertEqual(str(cm.exception), "cannot start")

    def test_replica_context(self):
        ctx = serve.get_replica_context()
        self.assertEqual((ctx.app_name, ctx.deployment, ctx.replica_id), FAKE.ids)


CALLER = """
import asyncio
from serve import deployment
from serve.exceptions import RayServeException

@deployment
class Caller:
    def __init__(self, other):
        self.other = other
    def sync(self, request):
        return {"r": self.other.method.remote(request.json()).result()}
    async def asy(self, request):
        a = self.other.remote("text")
        b = self.other.method.remote(b"\\x00raw")
        return {"r": [repr(await a), repr(await b)]}
    def fails(self, request):
        try:
            self.other.method.remote(1).result()
        except RayServeException as e:
            return {"status": e.status, "message": e.message, "type": type(e).__name__}
    def stream(self, request):
        return [p.decode() for p in self.other.options(stream=True).gen.remote(None)]
    async def astream(self, request):
        return [p.decode() async for p in self.other.options(stream=True).gen.remote(None)]

@deployment
class Other:
    def method(self, x):
        return x

app = Caller.bind(Other.bind())
"""


class HandleTest(Base):
    @classmethod
    def setUpClass(cls):
        cls.r = start(CALLER, name="callermod")

    def test_sync_call_encodes_json_and_passes_request(self):
        FAKE.routes["Other"] = lambda m, d: (200, d)
        req = Req("POST", body=b'{"x": [1, 2]}')
        resp = call(self.r, "sync", req)
        self.assertEqual(json.loads(resp.body), {"r": {"x": [1, 2]}})
        f = FAKE.calls[0]
        self.assertEqual((f.deployment, f.method, f.data), ("Other", "method", b'{"x":[1,2]}'))
        self.assertIs(f.req, req, "a call made while serving belongs to the request")

    def test_async_await(self):
        FAKE.routes["Other"] = lambda m, d: (200, d)
        req = Req("POST")
        resp = call(self.r, "asy", req)
        self.assertEqual(json.loads(resp.body), {"r": [repr(b"text"), repr(b"\x00raw")]})
        self.assertEqual([(f.method, f.data) for f in FAKE.calls], [("__call__", b"text"), ("method", b"\x00raw")])
        self.assertTrue(all(f.req is req for f in FAKE.calls), "asyncio tasks keep the request")

    def test_errors(self):
        FAKE.routes["Other"] = lambda m, d: (500, b"ValueError: nope\n")
        body = json.loads(call(self.r, "fails").body)
        self.assertEqual(body, {"status": 500, "message": "ValueError: nope", "type": "RayServeException"})
        FAKE.routes["Other"] = lambda m, d: (503, b"queue full")
        body = json.loads(call(self.r, "fails").body)
        self.assertEqual(body["type"], "BackPressureError")
        self.assertTrue(issubclass(BackPressureError, RayServeException))

    def test_call_not_started(self):
        def refuse(*a):
            raise FAKE.CallError(404, "no such method")
        saved = FAKE.call
        FAKE.call = refuse
        try:
            FAKE.routes["Other"] = lambda m, d: (200, b"")
            body = json.loads(call(self.r, "fails").body)
        finally:
            FAKE.call = saved
        self.assertEqual(body, {"status": 404, "message": "no such method", "type": "RayServeException"})

    def test_stream(self):
        FAKE.routes["Other"] = lambda m, d: [b"a", b"b", b"c"]
        self.assertEqual(json.loads(call(self.r, "stream").body), ["a", "b", "c"])
        self.assertEqual(json.loads(call(self.r, "astream").body), ["a", "b", "c"])
        self.assertTrue(all(f.stream for f in FAKE.calls))

    def test_stream_error(self):
        FAKE.routes["Other"] = lambda m, d: (502, b"died")
        resp = call(self.r, "stream")
        self.assertEqual(resp.status, 500)
        self.assertIn(b"RayServeException", resp.body)

    def test_result_outside_a_request_and_unwaited_cancelled(self):
        FAKE.routes["Other"] = lambda m, d: (200, b"[1, 2]")
        h = serve.DeploymentHandle("Other")
        self.assertEqual(h.method.remote().result(timeout_s=5), [1, 2])
        self.assertIsNone(FAKE.calls[0].req)
        self.assertEqual(FAKE.calls[0].data, b"")
        resp = h.method.remote("x")
        f = FAKE.calls[1]
        del resp
        self.assertTrue(f.cancelled)
        with self.assertRaises(TypeError):
            h.method.remote(1, 2)


class OtherAppHandleTest(Base):
    """serve.get_deployment_handle / serve.get_app_handle: "APP/DEPLOYMENT" and "APP/"."""

    def test_deployment_handle_of_another_app(self):
        FAKE.routes["echo/Echo"] = lambda m, d: (200, b"echo:" + d)
        h = serve.get_deployment_handle("Echo", "echo")
        self.assertEqual((h.deployment_name, h.app_name), ("Echo", "echo"))
        self.assertEqual(h.remote(b"hi").result(timeout_s=5), b"echo:hi")
        f = FAKE.calls[-1]
        self.assertEqual((f.deployment, f.method, f.data), ("echo/Echo", "__call__", b"hi"))
        self.assertEqual(repr(h), "DeploymentHandle('Echo', app_name='echo')")

    def test_default_app_is_ours_and_options_keep_the_app(self):
        FAKE.routes["app1/Dep"] = lambda m, d: [b"x", b"y"]
        h = serve.get_deployment_handle("Dep")
        self.assertEqual(h.app_name, FAKE.ids[0])
        self.assertEqual(list(h.options(stream=True).gen.remote()), [b"x", b"y"])
        self.assertEqual(FAKE.calls[-1].deployment, "app1/Dep")
        self.assertTrue(FAKE.calls[-1].stream)

    def test_app_handle_calls_the_ingress(self):
        FAKE.routes["pyapp/"] = lambda m, d: (200, b'{"m": "%s"}' % m.encode())
        h = serve.get_app_handle("pyapp")
        self.assertEqual(h.remote().result(), {"m": "__call__"})
        self.assertEqual(FAKE.calls[-1].deployment, "pyapp/")
        self.assertEqual(repr(h), "DeploymentHandle(app_name='pyapp')")

    def test_missing_app_or_deployment_is_404_naming_both(self):
        with self.assertRaises(RayServeException) as e:
            serve.get_deployment_handle("Nope", "noapp").remote().result()
        self.assertEqual(e.exception.status, 404)
        self.assertIn("'noapp'", str(e.exception))
        self.assertIn("'Nope'", str(e.exception))
        with self.assertRaises(RayServeException) as e:
            serve.get_app_handle("noapp").remote().result()
        self.assertEqual(e.exception.status, 404)

    def test_invalid_names(self):
        for bad in ("", "a/b", "a b", "a>b", None):
            with self.assertRaises(ValueError):
                serve.get_deployment_handle(bad, "app")
            with self.assertRaises(ValueError):
                serve.get_deployment_handle("Dep", bad if bad is not None else "")
            with self.assertRaises(ValueError):
                serve.get_app_handle(bad)


class CodecTest(unittest.TestCase):
    def test_rules(self):
        from serve import _codec
        self.assertEqual(_codec.encode(b"\x01"), b"\x01")
        self.assertEqual(_codec.encode("é"), "é".encode())
        self.assertEqual(_codec.encode({"a": [1]}), b'{"a":[1]}')
        self.assertEqual(_codec.encode(None), b"null")
        self.assertEqual(_codec.decode(b'{"a": 1}'), {"a": 1})
        self.assertEqual(_codec.decode(b" 12"), 12)
        self.assertEqual(_codec.decode(b"12 apples"), b"12 apples")
        self.assertEqual(_codec.decode(b"RNK1"), b"RNK1")
        self.assertEqual(_codec.decode(b""), b"")
        self.assertEqual(_codec.decode(b"\xff\xfe"), b"\xff\xfe")


class RequestTest(unittest.TestCase):
    def test_headers_case_insensitive(self):
        r = serve.Request("GET", "/", "x=1", [("Content-Type", "a/b"), ("X-Dup", "1"), ("x-dup", "2")], b"{}")
        self.assertEqual(r.headers["content-type"], "a/b")
        self.assertIn("CONTENT-TYPE", r.headers)
        self.assertEqual(r.headers.get_all("X-DUP"), ["1", "2"])
        self.assertEqual(r.query, {"x": "1"})
        self.assertEqual(r.json(), {})
        self.assertEqual(r.text(), "{}")


@unittest.skipUnless(HAVE_NUMPY, "python3-numpy is not installed")
class SearchTest(Base):
    """pysearch against the C code: search_ref.out is search_ref.c's output for search_ref.in."""

    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, os.path.join(SRCDIR, "examples", "python"))
        import pysearch
        cls.p = pysearch

    def test_same_vectors_and_rankings_as_c(self):
        import numpy as np
        p = self.p
        with open(os.path.join(HERE, "search_ref.in"), "rb") as f:
            lines = f.read().split(b"\n")
        with open(os.path.join(HERE, "search_ref.out")) as f:
            want = f.read().split("\n")
        got, q, docs = [], None, []
        for line in lines:
            kind, text = line[:1], line[2:]
            if kind == b"E":
                got.append("".join("%08x" % x for x in p.embed_text(text).view(np.uint32)))
            elif kind == b"Q":
                q, docs = p.embed_text(text), []
            elif kind == b"D":
                docs.append(p.embed_text(text))
            elif kind == b"R":
                d = np.array(docs, dtype=np.float32).reshape(len(docs), p.DIM)
                got.append("".join("%d:%.6f " % (i, s) for i, s in p.rank_vectors(q, d, int(text))))
        self.assertEqual(want[-1], "")
        self.assertEqual(len(got), len(want) - 1)
        for i, (g, w) in enumerate(zip(got, want)):
            self.assertEqual(g, w, "line %d" % i)

    def test_pipeline_contract(self):
        """The whole pipeline over the fake: Embedder and Ranker answered by their own code."""
        p = self.p
        _runtime.load(os.path.join(SRCDIR, "examples", "python", "pysearch.py"), "app")
        pipe = _runtime.init("Pipeline", None, None)
        emb = _runtime.init("Embedder", None, None)
        rank = _runtime.init("Ranker", None, None)

        def route(replica):
            def answer(method, data):
                req, resp = Req("POST", body=data, caller="Pipeline"), Resp()
                if method in replica.batched:
                    _runtime.invoke_batch(replica, method, [req], [resp])
                else:
                    _runtime.invoke(replica, method, req, resp)
                return resp.status, resp.body
            return answer

        FAKE.routes["Embedder"] = route(emb)
        FAKE.routes["Ranker"] = route(rank)

        def search(body, method="POST"):
            resp = call(pipe, req=Req(method, body=body if isinstance(body, bytes) else json.dumps(body).encode()))
            return resp.status, resp.body, resp

        self.assertEqual(search({"query": "cat", "docs": ["a dog barks", "a cat sleeps"], "top_k": 1})[:2],
                         (200, b'{"results":[{"index":1,"score":0.571429}]}\n'))
        self.assertEqual(search({"query": "cat", "docs": []})[:2], (200, b'{"results":[]}\n'))
        st, body, resp = search(b"", "GET")
        self.assertEqual((st, body), (405, b'{"error":"method GET not allowed: POST a JSON search request"}'))
        self.assertEqual(resp.header("allow"), "POST")
        cases = [
            (b"{", 400, "the body is not valid JSON"),
            (b"[]", 400, "the body must be a JSON object"),
            ({"docs": []}, 400, 'missing field "query"'),
            ({"query": 1, "docs": []}, 400, '"query" must be a string'),
            ({"query": "x" * 65537, "docs": []}, 413, '"query" is longer than 65536 bytes'),
            ({"query": "x"}, 400, 'missing field "docs"'),
            ({"query": "x", "docs": "y"}, 400, '"docs" must be an array of strings'),
            ({"query": "x", "docs": ["a", 2]}, 400, '"docs"[1] must be a string'),
            ({"query": "x", "docs": ["a"] * 1025}, 413, "too many docs: at most 1024"),
            ({"query": "x", "docs": [], "top_k": 0}, 400, '"top_k" must be an integer >= 1'),
            ({"query": "x", "docs": [], "top_k": 1.5}, 400, '"top_k" must be an integer >= 1'),
            ({"query": "x", "docs": [], "top_k": True}, 400, '"top_k" must be an integer >= 1'),
            ({"query": "x", "docs": ["a", "y" * 65537]}, 413, '"docs"[1] is longer than 65536 bytes'),
        ]
        for body, status, message in cases:
            st, got, _ = search(body)
            self.assertEqual((st, json.loads(got)), (status, {"error": message}), body if len(str(body)) < 80 else status)
        # top_k past the documents, ties ordered by index, trailing bytes ignored as cJSON does
        st, got, _ = search(b'{"query":"zzz","docs":["a","b","c"],"top_k":2e3} trailing')
        self.assertEqual(got, b'{"results":[{"index":0,"score":0.000000},{"index":1,"score":0.000000},'
                              b'{"index":2,"score":0.000000}]}\n')
        # a failing Embedder: 502 quoting it; backpressure passes through as 503
        FAKE.routes["Embedder"] = lambda m, d: (500, b"boom")
        st, got, _ = search({"query": "x", "docs": []})
        self.assertEqual((st, json.loads(got)), (502, {"error": "Embedder.embed: boom"}))
        FAKE.routes["Embedder"] = lambda m, d: (503, b"full")
        self.assertEqual(search({"query": "x", "docs": []})[0], 503)


if __name__ == "__main__":
    unittest.main(verbosity=1)
