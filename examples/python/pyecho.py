"""The Python twin of echo.so: answers with the request body (or "hello\n").

    curl -d 'hi' http://localhost:8000/pyecho      -> hi
    curl http://localhost:8000/pyecho              -> hello

app_async is the same as an async def handler (served on the replica's asyncio loop)."""

from serve import Response, deployment


@deployment
class PyEcho:
    def __call__(self, request):
        body, ctype = request.body, request.headers.get("Content-Type")
        if not body:
            body, ctype = b"hello\n", ctype or "text/plain"
        return Response(body, headers={"Content-Type": ctype} if ctype else None)


@deployment(name="PyEchoAsync")
class PyEchoAsync:
    async def __call__(self, request):
        body, ctype = request.body, request.headers.get("Content-Type")
        if not body:
            body, ctype = b"hello\n", ctype or "text/plain"
        return Response(body, headers={"Content-Type": ctype} if ctype else None)


app = PyEcho.bind()
app_async = PyEchoAsync.bind()
