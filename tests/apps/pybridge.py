"""Python deployments through serve-replica's bridge (tests/integration/python_bridge.sh): a
round trip, a handler that raises (500), user_config and autoscaling_config defaults in code,
and an __init__ that raises when the application's args say so."""
from serve import deployment


@deployment(max_ongoing_requests=2, user_config={"greeting": "hi"},
            autoscaling_config={"min_replicas": 1, "max_replicas": 2})
class PyBridge:
    def __init__(self, fail_init=False):
        if fail_init:
            raise RuntimeError("init refused: fail_init was set")
        self.greeting = "hello"

    def reconfigure(self, config):
        self.greeting = config.get("greeting", "hello")

    def __call__(self, request):
        if request.path == "/boom":
            raise ValueError("bad input")
        return {"greeting": self.greeting, "body": request.body.decode()}


app = PyBridge.bind()
failing = PyBridge.bind(fail_init=True)
