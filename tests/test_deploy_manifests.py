"""The deployment files agree with each other and with ``cowsim serve``.

The Dockerfile, ``deploy/compose.yaml`` and ``deploy/kubernetes/`` are read here as data
(PyYAML, a small Dockerfile reader); no Docker daemon, cluster or network is needed.
What is checked is what would otherwise break silently, at someone else's first start:

* every command line (the image's ENTRYPOINT + CMD, the Deployment's args) parses with
  the real ``cowsim serve`` parser (service/cli.py's ``add_command``) and
  ``config_from_args``, so a renamed flag or a bad value fails here;
* the ports those command lines give are the ones EXPOSE, compose, the probes, the
  Service, the scrape annotations and Prometheus's ``cowsim:9464`` target name;
* every file compose mounts exists, and what Prometheus (its rule files) and Grafana
  (provisioning, the provider's dashboard ``path``, the home dashboard) read inside the
  containers is mounted from the repository;
* the drain fits in the grace periods, the memory limit holds every worker at its
  ``--worker-memory``, the non-root user is the same in the image and the pod.

Two tests call tools when present and skip otherwise (neither is in CI's list):
``docker compose config`` (or Debian's ``docker-compose``) and ``kubectl kustomize``.
The image's HEALTHCHECK command runs for real against a ``cowsim serve`` on loopback.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from grpc_health.v1 import health_pb2

from cowsim.service import cli as serve_cli
from cowsim.service.limits import Limits
from cowsim.service.server import ServerConfig
from tests.service_helpers import ServerThread

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"

MiB, GiB = 1 << 20, 1 << 30
#: What the memory limit must hold beyond the workers' --worker-memory: the server
#: process and each worker's own interpreter with numpy, simpy and grpc loaded.
HEADROOM_BYTES = 512 * MiB
#: After the drain, the server gives calls in flight this long (service/server.py's
#: ``server.stop(grace=2.0)``) before it exits.
CALLS_GRACE_SECONDS = 2.0


# --- cowsim serve's own parser ---------------------------------------------------------

class _RefusedError(Exception):
    """argparse's error, raised instead of exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _RefusedError(message)


def serve_config(argv: list[str]) -> ServerConfig:
    """What ``cowsim serve`` makes of ``argv`` (the words after ``serve``): its parser as
    service/cli.py builds it, then the same checks ``cowsim serve`` runs before starting."""
    parser = _Parser(prog="cowsim")
    serve_cli.add_command(parser.add_subparsers(dest="command", parser_class=_Parser))
    return serve_cli.config_from_args(parser.parse_args(["serve", *argv]))


def test_the_parser_refuses_what_cowsim_serve_refuses() -> None:
    """The helper above is strict: an unknown flag and a bad value fail, as they should."""
    assert serve_config(["--port", "50051"]).port == 50051
    with pytest.raises(_RefusedError, match="--metrics-prot"):
        serve_config(["--metrics-prot", "9464"])
    with pytest.raises(Exception, match="worker-memory"):
        serve_config(["--worker-memory", "lots"])


# --- the Dockerfile ----------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def exec_form(name: str) -> list[str]:
    """The last NAME of the final stage as a JSON array.  The exec form matters for
    ENTRYPOINT: the shell form runs ``/bin/sh -c``, which does not pass SIGTERM on, and a
    container stop would kill the server without its drain."""
    [*_, text] = instruction(name)
    words = json.loads(text)
    assert isinstance(words, list), f"{name} is not in exec form: {text}"
    return [str(word) for word in words]


def image_argv(args: list[str] | None = None) -> list[str]:
    """The image's command line with ``args`` in place of CMD (as compose's ``command``
    and a pod's ``args`` replace it), checked to be ``cowsim serve``."""
    entrypoint = exec_form("ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts, f"{entrypoint[0]} is not an installed script"
    assert entrypoint[1] == "serve"
    return entrypoint[2:] + (exec_form("CMD") if args is None else args)


def image_config() -> ServerConfig:
    return serve_config(image_argv())


def image_user() -> tuple[int, int]:
    [*_, user] = instruction("USER")
    uid, _, gid = user.partition(":")
    # numeric uid:gid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd
    assert uid.isdigit(), user
    assert gid.isdigit(), user
    return int(uid), int(gid)


def test_the_image_runs_cowsim_serve_on_every_interface() -> None:
    config = image_config()
    # listening on loopback inside a container is unreachable from outside it
    assert config.host in ("0.0.0.0", "[::]"), config.host
    assert config.metrics_port is not None, "the image serves no metrics"
    exposed = {int(port) for text in instruction("EXPOSE") for port in text.split()}
    assert exposed == {config.port, config.metrics_port}
    assert [json.loads(text) for text in instruction("VOLUME")] == [[str(config.data_dir)]]
    assert image_user()[0] != 0


def test_the_image_installs_the_packages_without_dev_extras() -> None:
    """Every folder pyproject.toml maps to a package is copied into the build (a new one
    left out would be an image that fails on import), and the dev extras are not installed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {PurePosixPath(path).parts[0]
               for path in project["tool"]["setuptools"]["package-dir"].values()}
    copied = {PurePosixPath(source).parts[0] for text in instruction("COPY")
              if not text.startswith("--from") for source in shlex.split(text)[:-1]}
    assert folders | {"pyproject.toml", project["project"]["readme"]} <= copied
    installs = [text for text in instruction("RUN") if "pip install" in text]
    assert installs, "no pip install in the Dockerfile"
    assert not any("[dev]" in text or "-e " in text for text in installs), installs


def test_dockerignore_keeps_out_the_venv_and_lets_in_what_is_copied() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "cowsim-data"} <= set(patterns)
    for text in instruction("COPY"):
        if text.startswith("--from"):
            continue
        *sources, _ = shlex.split(text)
        for source in sources:
            name = source.rstrip("/")
            assert not any(fnmatch(name, pattern) for pattern in patterns), \
                f".dockerignore excludes {name}, which the Dockerfile copies"


def healthcheck_command() -> list[str]:
    [text] = instruction("HEALTHCHECK")
    options, _, command = text.partition("CMD ")
    assert "--interval" in options
    words = json.loads(command)
    assert isinstance(words, list), "HEALTHCHECK CMD is not in exec form"
    return [str(word) for word in words]


def test_the_healthcheck_asks_the_grpc_health_service(tmp_path: Path) -> None:
    """The HEALTHCHECK command itself, against a real server: exit 0 while it serves,
    non-zero once it reports NOT_SERVING (as from SIGTERM on) and with nothing listening.
    Its address is the image's gRPC port."""
    program, flag, code = healthcheck_command()
    assert (program, flag) == ("python3", "-c")
    address = f"127.0.0.1:{image_config().port}"
    assert address in code

    def check(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code.replace(address, f"127.0.0.1:{port}")],
                              capture_output=True, text=True, timeout=30, check=False)

    server = ServerThread(ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data",
                                       limits=Limits(workers=1)))
    try:
        serving = check(server.port)
        server.call(server.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
        draining = check(server.port)
    finally:
        server.stop()
    assert serving.returncode == 0, serving.stderr
    assert draining.returncode == 1, draining.stderr
    assert check(server.port).returncode != 0  # nothing listening


# --- deploy/compose.yaml -------------------------------------------------------------------

def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, container path) of each volume in short syntax (SOURCE:TARGET[:ro])."""
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        yield source, target


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file behind ``container_path`` in a service: the bind mount with the
    longest target containing it; failing when no bind mount of the repository covers it."""
    inside = PurePosixPath(container_path)
    best: tuple[int, Path] | None = None
    for source, target in mounts(service):
        if not source.startswith((".", "/")):
            continue  # a named volume: not from the repository
        if inside == PurePosixPath(target) or PurePosixPath(target) in inside.parents:
            rest = inside.relative_to(target)
            depth = len(PurePosixPath(target).parts)
            if best is None or depth > best[0]:
                best = (depth, (COMPOSE.parent / source / rest).resolve())
    assert best is not None, f"nothing of the repository is mounted at {container_path}"
    return best[1]


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(port).rsplit(":", 1)[-1]) for port in service.get("ports", [])}


def cowsim_service() -> tuple[str, dict[str, Any]]:
    """The service built from the repository's Dockerfile."""
    built = [(name, service) for name, service in compose()["services"].items()
             if "build" in service]
    assert len(built) == 1, built
    name, service = built[0]
    build = service["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() \
        == ROOT / "Dockerfile"
    return name, service


def compose_config() -> ServerConfig:
    _, service = cowsim_service()
    command = service.get("command")
    return serve_config(image_argv(None if command is None else list(command)))


def test_every_file_compose_mounts_exists() -> None:
    document = compose()
    named = set(document.get("volumes") or {})
    checked = 0
    for name, service in document["services"].items():
        for source, _ in mounts(service):
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), (name, source)
                checked += 1
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    assert checked >= 4  # prometheus.yml, rules, provisioning, dashboards


def test_compose_publishes_the_image_ports_and_keeps_the_store() -> None:
    config = compose_config()
    _, service = cowsim_service()
    assert container_ports(service) == {config.port, config.metrics_port}
    assert any(target == str(config.data_dir) for _, target in mounts(service)), \
        f"the run store ({config.data_dir}) is not on a volume"
    grace = re.fullmatch(r"(\d+)s", str(service["stop_grace_period"]))
    assert grace is not None
    assert int(grace.group(1)) > config.drain_seconds + CALLS_GRACE_SECONDS


def test_prometheus_scrapes_the_compose_service_on_the_metrics_port() -> None:
    name, _ = cowsim_service()
    config = compose_config()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [job for job in scrape["scrape_configs"] if job["job_name"] == "cowsim"]
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"{name}:{config.metrics_port}"]


def test_prometheus_in_compose_reads_the_repositorys_config_and_rules() -> None:
    prometheus = compose()["services"]["prometheus"]
    [config_file] = [flag.split("=", 1)[1] for flag in prometheus["command"]
                     if flag.startswith("--config.file=")]
    assert host_path(prometheus, config_file) == DEPLOY / "prometheus" / "prometheus.yml"
    rule_files = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert rule_files
    for rule_file in rule_files:  # relative to the config file, as Prometheus reads them
        inside = PurePosixPath(config_file).parent / rule_file
        assert host_path(prometheus, str(inside)).is_file(), inside


def test_grafana_in_compose_gets_provisioning_datasource_and_dashboards() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    assert host_path(grafana, "/etc/grafana/provisioning") == DEPLOY / "grafana" / "provisioning"
    providers = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "cowsim.yml").read_text())
    [provider] = providers["providers"]
    folder = host_path(grafana, provider["options"]["path"])
    assert folder == DEPLOY / "grafana" / "dashboards"
    assert sorted(folder.glob("*.json")), folder
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file(), home
    assert PurePosixPath(provider["options"]["path"]) in PurePosixPath(home).parents
    # a newcomer sees the dashboards without an account
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    # the datasource is the compose Prometheus, on a port it listens on
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    found = re.fullmatch(r"http://([^:/]+):(\d+)", source["url"])
    assert found is not None, source["url"]
    assert found.group(1) in services
    assert int(found.group(2)) in container_ports(services[found.group(1)])


def test_compose_waits_only_on_healthchecks_that_exist() -> None:
    services = compose()["services"]
    built, _ = cowsim_service()
    waited = 0
    for name, service in services.items():
        for other, condition in (service.get("depends_on") or {}).items():
            assert other in services, (name, other)
            if condition["condition"] == "service_healthy":
                # the built service inherits the Dockerfile's HEALTHCHECK
                assert "healthcheck" in services[other] or (other == built and
                                                             instruction("HEALTHCHECK")), other
                waited += 1
    assert waited >= 2


def _compose_command() -> list[str]:
    """``docker compose`` (the v2 plugin), else Debian 12's ``docker-compose`` 1.29; a skip
    without either.  Neither needs a daemon for ``config``."""
    docker = shutil.which("docker")
    if docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True,
                                             timeout=30, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    pytest.skip("neither docker compose nor docker-compose is installed")


def test_docker_compose_accepts_the_file() -> None:
    """``docker compose config`` validates the file against the compose schema."""
    done = subprocess.run([*_compose_command(), "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


# --- deploy/kubernetes/ --------------------------------------------------------------------

def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/kubernetes/*.yaml (the kustomization aside) by (kind, name)."""
    objects = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def deployment() -> dict[str, Any]:
    return manifests()[("Deployment", "cowsim")]


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    [only] = pod()["containers"]
    assert isinstance(only, dict)
    return only


def pod_config() -> ServerConfig:
    """The container's command line: the image's ENTRYPOINT with the pod's args."""
    assert "command" not in container(), "command would replace the image's ENTRYPOINT"
    return serve_config(image_argv(list(container()["args"])))


def port_number(port: int | str) -> int:
    """A port as a probe or a Service names it: a number, or a container port's name."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container()["ports"] if p["name"] == port]
    assert isinstance(number, int)
    return number


def quantity(text: str | int) -> float:
    """A Kubernetes quantity: 3Gi, 512Mi, 2, 2500m, 1G."""
    found = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?", str(text))
    assert found is not None, text
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}[found.group(2)]
    return float(found.group(1)) * scale


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    images = {image["name"] for image in kustomization.get("images", [])}
    assert images <= {container()["image"].split(":")[0]}


def test_one_replica_recreated_on_the_claimed_volume() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 1  # SQLite: one writer
    assert spec["strategy"]["type"] == "Recreate"
    claims = {name for kind, name in manifests() if kind == "PersistentVolumeClaim"}
    volumes = {volume["name"]: volume for volume in pod()["volumes"]}
    mounted = {mount["mountPath"]: volumes[mount["name"]] for mount in container()["volumeMounts"]}
    data = mounted[str(pod_config().data_dir)]
    assert data["persistentVolumeClaim"]["claimName"] in claims
    claim = manifests()[("PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_probes_ask_grpc_health_on_the_grpc_port() -> None:
    config = pod_config()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert port_number(container()[probe]["grpc"]["port"]) == config.port, probe
        # the empty service name: the whole server, which cowsim serve reports
        assert container()[probe]["grpc"].get("service", "") == "", probe


def test_the_service_routes_grpc_and_metrics() -> None:
    config = pod_config()
    service = manifests()[("Service", "cowsim")]
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    by_name = {port["name"]: port for port in service["spec"]["ports"]}
    assert port_number(by_name["grpc"]["targetPort"]) == config.port
    assert by_name["grpc"]["port"] == config.port
    assert port_number(by_name["metrics"]["targetPort"]) == config.metrics_port
    assert by_name["metrics"]["port"] == config.metrics_port


def test_scrape_annotations_name_the_metrics_port() -> None:
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(pod_config().metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_pod_drains_before_it_is_killed() -> None:
    config = pod_config()
    assert pod()["terminationGracePeriodSeconds"] > config.drain_seconds + CALLS_GRACE_SECONDS


def test_resources_hold_every_worker() -> None:
    config = pod_config()
    resources = container()["resources"]
    need = config.limits.workers * config.limits.worker_memory_bytes + HEADROOM_BYTES
    assert quantity(resources["limits"]["memory"]) >= need
    assert quantity(resources["requests"]["memory"]) >= need
    assert quantity(resources["requests"]["cpu"]) >= config.limits.workers
    assert quantity(resources["limits"]["cpu"]) >= quantity(resources["requests"]["cpu"])


def test_the_pod_runs_as_the_images_user_on_a_read_only_root() -> None:
    uid, gid = image_user()
    security = pod()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, gid, gid)
    own = container()["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    # with a read-only root, everything written must be a mount: the store and /tmp
    paths = {mount["mountPath"] for mount in container()["volumeMounts"]}
    assert {str(pod_config().data_dir), "/tmp"} <= paths


def test_the_annotation_scrape_job_keeps_the_alerts_job_name() -> None:
    """prometheus-scrape.yml (discovery by annotation) names its job as prometheus.yml does,
    which CowsimDown selects on, and reads the three annotations of the pod."""
    job_names = [job["job_name"] for job in
                 yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]]
    [job] = yaml.safe_load((KUBERNETES / "prometheus-scrape.yml").read_text())["scrape_configs"]
    assert job["job_name"] in job_names
    alerts = (DEPLOY / "prometheus" / "rules" / "cowsim-alerts.yml").read_text()
    assert f'job="{job["job_name"]}"' in alerts
    sources = {label for rule in job["relabel_configs"] for label in rule["source_labels"]}
    for annotation in deployment()["spec"]["template"]["metadata"]["annotations"]:
        meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)
        assert meta in sources, annotation
    [keep] = [rule for rule in job["relabel_configs"]
              if rule["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]]
    assert keep["regex"] == deployment()["spec"]["template"]["metadata"]["labels"][
        "app.kubernetes.io/name"]


def test_kubectl_kustomize_builds_the_manifests() -> None:
    """``kubectl kustomize`` (offline) builds the set; skipped without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl")
    done = subprocess.run([kubectl, "kustomize", str(KUBERNETES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    kinds = sorted(document["kind"] for document in yaml.safe_load_all(done.stdout))
    assert kinds == ["Deployment", "PersistentVolumeClaim", "Service"]
