"""The applications of deploy/*.yaml from Python: what `serve run` builds, with overrides.

    spec = load_app_spec("deploy/teacher.yaml")
    serve.run(spec.build(args={"model": "/tmp/teacher"}, options={"num_replicas": 1}),
              name=spec.name, route_prefix=spec.route_prefix)

Tests and benchmarks start the services this way, so they run the YAML's import path, args and
deployment options (autoscaling included) rather than a copy of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class AppSpec:
    """One application of a Serve config file."""

    name: str  # application name
    route_prefix: str  # HTTP path the app answers under
    import_path: str  # "module:builder"
    args: dict  # the builder's args
    deployment_options: dict = field(default_factory=dict)  # the app's one deployment's options (autoscaling_config, ...)

    def build(self, args: dict | None = None, options: dict | None = None):
        """The Serve Application, `args` merged over the YAML's and `options` over its deployment options.

        Calls `application(args, **options)` of the import path's module: every serving module has
        one beside its `build_app` (which is `application` without options, as `serve run` calls it).
        """
        import importlib

        module = importlib.import_module(self.import_path.split(":")[0])
        opts = {**self.deployment_options, **(options or {})}
        if "num_replicas" in (options or {}):
            opts.pop("autoscaling_config", None)  # a fixed replica count replaces autoscaling
        return module.application({**self.args, **(args or {})}, **opts)


def load_app_spec(path: str | Path, name: str | None = None) -> AppSpec:
    """The application `name` (or the only one) of a Serve config file, checked against Serve's schema."""
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(Path(path).read_text()))
    apps = [a for a in config.applications if name is None or a.name == name]
    if len(apps) != 1:
        raise ValueError(f"{path}: expected one application{' named ' + name if name else ''}, found "
                         f"{[a.name for a in config.applications]}")
    app = apps[0]
    if len(app.deployments) > 1:
        raise ValueError(f"{path}: application {app.name} has {len(app.deployments)} deployments; expected one")
    options = app.deployments[0].model_dump(exclude_unset=True) if app.deployments else {}
    options.pop("name", None)
    return AppSpec(app.name, app.route_prefix, app.import_path, dict(app.args), options)
