"""serve: Ray Serve's Python API for deployments served by serve's C data plane.

    from serve import deployment

    @deployment
    class Hello:
        def __call__(self, request):
            return {"hello": request.query.get("name", "world")}

    app = Hello.bind()

apps.yaml: `import_path: hello:app`. See the README's "Python deployments"."""

from . import exceptions
from ._api import (Application, Deployment, ReplicaContext, Request, Response, batch, deployment,
                   get_replica_context)
from .handle import (DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator, get_app_handle,
                     get_deployment_handle)

__all__ = ["Application", "Deployment", "DeploymentHandle", "DeploymentResponse",
           "DeploymentResponseGenerator", "ReplicaContext", "Request", "Response", "batch",
           "deployment", "exceptions", "get_app_handle", "get_deployment_handle", "get_replica_context"]
