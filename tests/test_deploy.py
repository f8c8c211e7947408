"""The deployment files under ``deploy/``: Kubernetes manifests, the image build, the
systemd unit.

No cluster and no container engine run here, so the manifests are checked against the
Kubernetes API schemas that kubernetes-validate ships (offline), the ConfigMap's
``gateway.yaml`` against the gateway's own configuration loader, and the relations
between them (probe ports, grace period, labels) by reading them.  The systemd unit is
checked by ``systemd-analyze verify`` where that exists, and always by parsing it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import kubernetes_validate
import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from eventgw.config import GatewayConfig, load_config
from eventgw.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")
MANIFESTS = ("configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml")
UNIT = os.path.join(DEPLOY, "systemd", "eventgw.service")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")

# The oldest Kubernetes release the manifests target (grpc probes are GA since 1.27)
# and the newest the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())

# The operations sections of the configuration (admin listener, drain, reload,
# metrics).  A loader that does not know them yet refuses them as unknown keys; only
# then, and only those, are they left out of the loader check below.
OPERATIONS_SECTIONS = ("admin", "shutdown", "reload", "metrics")

ENTRYPOINT = ["twistd", "-n", "--pidfile=", "eventgw", "--config", "/etc/eventgw/gateway.yaml"]
ADMIN_PORT = 9901
DRAIN_TIMEOUT = 30


def _documents(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(KUBERNETES, name)) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _only(name: str, kind: str) -> dict[str, Any]:
    docs = [doc for doc in _documents(name) if doc["kind"] == kind]
    assert len(docs) == 1, (name, kind, docs)
    return docs[0]


def _gateway_text() -> str:
    text = _only("configmap.yaml", "ConfigMap")["data"]["gateway.yaml"]
    assert isinstance(text, str)
    return text


def _gateway_file() -> dict[str, Any]:
    raw = yaml.safe_load(_gateway_text())
    assert isinstance(raw, dict)
    return raw


def _load_gateway_yaml(raw: dict[str, Any]) -> tuple[GatewayConfig, list[str]]:
    """Load the ConfigMap's file with the gateway's loader; the operations sections the
    loader refuses as unknown are dropped (and named in the result), nothing else."""
    raw = dict(raw)
    dropped: list[str] = []
    while True:
        try:
            return load_config(yaml.safe_dump(raw), source="configmap.yaml", environ={}), dropped
        except ConfigError as error:
            if error.key in OPERATIONS_SECTIONS and error.message.startswith("unknown key"):
                del raw[error.key]
                dropped.append(error.key)
                continue
            raise


def _container() -> dict[str, Any]:
    pod = _only("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    containers = pod["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    for entry in container["ports"]:
        if entry["name"] == port:
            return int(entry["containerPort"])
    raise AssertionError(f"no container port named {port!r}")


class ManifestSchemaTests(SynchronousTestCase):
    def test_manifests_validate(self) -> None:
        """Every manifest validates, strictly (no unknown fields), against the schemas of
        the oldest and the newest Kubernetes release targeted."""
        for name in MANIFESTS:
            docs = _documents(name)
            self.assertTrue(docs, name)
            for doc in docs:
                for version in KUBERNETES_VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as error:
                        self.fail(f"{name} ({doc['kind']}) on {version}: {error}")

    def test_invalid_manifest_is_refused(self) -> None:
        """The validation is real: a misspelt field of the Deployment is refused."""
        doc = _only("deployment.yaml", "Deployment")
        doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)

    def test_kustomization_lists_every_manifest(self) -> None:
        """``kubectl apply -k deploy/kubernetes`` applies all the manifests."""
        with open(os.path.join(KUBERNETES, "kustomization.yaml")) as f:
            kustomization = yaml.safe_load(f)
        self.assertEqual(sorted(kustomization["resources"]), sorted(MANIFESTS))


class ConfigMapTests(SynchronousTestCase):
    def test_gateway_yaml_loads(self) -> None:
        """The ConfigMap's gateway.yaml passes the gateway's own configuration loader;
        only operations sections this loader does not know may be left out."""
        raw = _gateway_file()
        config, dropped = _load_gateway_yaml(raw)
        self.assertLessEqual(set(dropped), set(OPERATIONS_SECTIONS))
        self.assertEqual((config.listen.tls, config.listen.cleartext), (9001, 9080))
        self.assertEqual(config.listen.interface, "0.0.0.0")

    def test_loader_check_is_real(self) -> None:
        """A bad key outside the operations sections still fails the check."""
        raw = _gateway_file()
        raw["limits"] = {**raw["limits"], "idle_timeuot": 1}
        with self.assertRaises(ConfigError):
            _load_gateway_yaml(raw)

    def test_operations_keys(self) -> None:
        """The file runs the admin listener on all interfaces, port 9901, and drains for
        30 seconds, in the keys of the operations contract."""
        raw = _gateway_file()
        self.assertEqual(raw["admin"], {"listen": f"0.0.0.0:{ADMIN_PORT}"})
        self.assertEqual(raw["shutdown"]["drain_timeout"], DRAIN_TIMEOUT)
        self.assertIs(raw["reload"]["watch"], True)

    def test_dev_cert_dir_on_the_writable_volume(self) -> None:
        """The development certificate is written below a mounted emptyDir, since the
        root file system is read-only."""
        config, _ = _load_gateway_yaml(_gateway_file())
        mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
        pod = _only("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        writable = [mounts[name] for name in empty_dirs if name in mounts]
        self.assertTrue(
            any(config.tls.dev_cert_dir.startswith(path + "/") for path in writable),
            (config.tls.dev_cert_dir, writable),
        )

    def test_config_mounted_where_the_image_reads_it(self) -> None:
        """The ConfigMap is mounted as a directory (so its updates arrive) at the path
        the image's ENTRYPOINT reads."""
        mounts = {m["name"]: m for m in _container()["volumeMounts"]}
        self.assertEqual(mounts["config"]["mountPath"], os.path.dirname(ENTRYPOINT[-1]))
        self.assertNotIn("subPath", mounts["config"])
        pod = _only("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "config")
        self.assertEqual(volume["configMap"]["name"], _only("configmap.yaml", "ConfigMap")
                         ["metadata"]["name"])


class DeploymentTests(SynchronousTestCase):
    def test_probes_on_the_admin_port(self) -> None:
        """Readiness is ``GET /readyz``, liveness ``GET /healthz``, both on the admin
        port the ConfigMap's ``admin.listen`` opens."""
        container = _container()
        admin = int(_gateway_file()["admin"]["listen"].rsplit(":", 1)[1])
        self.assertEqual(admin, ADMIN_PORT)
        readiness = container["readinessProbe"]["httpGet"]
        liveness = container["livenessProbe"]["httpGet"]
        self.assertEqual(readiness["path"], "/readyz")
        self.assertEqual(liveness["path"], "/healthz")
        self.assertEqual(_port_number(container, readiness["port"]), admin)
        self.assertEqual(_port_number(container, liveness["port"]), admin)

    def test_grpc_probe_variant_documented(self) -> None:
        """The gRPC probe variant is there, commented, on the admin port."""
        with open(os.path.join(KUBERNETES, "deployment.yaml")) as f:
            text = f.read()
        self.assertRegex(text, r"#\s+grpc:\n\s*#\s+port: 9901")

    def test_grace_period_covers_prestop_and_drain(self) -> None:
        """terminationGracePeriodSeconds exceeds the preStop sleep plus the drain timeout
        of the ConfigMap, so SIGKILL never cuts a drain short."""
        pod = _only("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
        command = _container()["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(command[0], "/bin/sleep")
        pre_stop = float(command[1])
        drain = float(_gateway_file()["shutdown"]["drain_timeout"])
        self.assertGreater(pod["terminationGracePeriodSeconds"], pre_stop + drain)

    def test_security_context(self) -> None:
        """Non-root, read-only root file system, no privilege escalation, every
        capability dropped, the runtime's default seccomp profile."""
        pod = _only("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
        context = _container()["securityContext"]
        self.assertIs(pod["securityContext"]["runAsNonRoot"], True)
        self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
        self.assertEqual(pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
        self.assertIs(context["runAsNonRoot"], True)
        self.assertIs(context["readOnlyRootFilesystem"], True)
        self.assertIs(context["allowPrivilegeEscalation"], False)
        self.assertEqual(context["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("add", context["capabilities"])
        self.assertEqual(context["seccompProfile"], {"type": "RuntimeDefault"})

    def test_resources(self) -> None:
        """CPU and memory have requests and limits (the HPA scales on CPU requests)."""
        resources = _container()["resources"]
        for kind in ("requests", "limits"):
            self.assertEqual(set(resources[kind]), {"cpu", "memory"}, kind)

    def test_container_ports_match_the_config(self) -> None:
        """The container declares the TLS, cleartext and admin ports the file listens on."""
        raw = _gateway_file()
        ports = {p["containerPort"] for p in _container()["ports"]}
        self.assertEqual(ports, {raw["listen"]["tls"], raw["listen"]["cleartext"], ADMIN_PORT})

    def test_selectors_match_the_pods(self) -> None:
        """The Service, the PodDisruptionBudget and the Deployment's own selector pick
        the Deployment's pods; the HPA scales that Deployment."""
        deployment = _only("deployment.yaml", "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selectors = [
            deployment["spec"]["selector"]["matchLabels"],
            _only("service.yaml", "Service")["spec"]["selector"],
            _only("pdb.yaml", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ]
        for selector in selectors:
            self.assertLessEqual(selector.items(), labels.items())
        target = _only("hpa.yaml", "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
        self.assertEqual((target["kind"], target["name"]),
                         ("Deployment", deployment["metadata"]["name"]))

    def test_service_targets_named_ports(self) -> None:
        """The Service's target ports are container ports of the pod, admin excluded."""
        names = {p["name"] for p in _container()["ports"]}
        targets = {p["targetPort"] for p in _only("service.yaml", "Service")["spec"]["ports"]}
        self.assertLessEqual(targets, names)
        self.assertNotIn("admin", targets)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuations joined."""
    with open(DOCKERFILE) as f:
        text = f.read()
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    result = []
    for line in lines:
        instruction, _, arguments = line.strip().partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


class DockerfileTests(SynchronousTestCase):
    def test_multi_stage_wheel(self) -> None:
        """A build stage makes the wheel from the checkout and installs it into a virtual
        environment; the final stage copies only that environment."""
        instructions = _dockerfile_instructions()
        froms = [args for name, args in instructions if name == "FROM"]
        self.assertEqual(len(froms), 2)
        self.assertTrue(froms[0].endswith(" AS build"))
        runs = " ".join(args for name, args in instructions if name == "RUN")
        self.assertIn("pip wheel --no-deps --wheel-dir /dist .", runs)
        self.assertIn("/opt/eventgw/bin/pip install /dist/eventgw-*.whl", runs)
        self.assertIn(("COPY", "--from=build /opt/eventgw /opt/eventgw"), instructions)
        base = next(args for name, args in instructions if name == "ARG")
        self.assertRegex(base, r"^PYTHON_IMAGE=python:3\.1[1-9]-slim")

    def test_copied_files_exist(self) -> None:
        """Every file the build stage copies from the context exists in the checkout and
        is let through by the build context's ignore file."""
        with open(DOCKERFILE + ".dockerignore") as f:
            allowed = {line[1:].strip().removesuffix("/**") for line in f if line.startswith("!")}
        for name, args in _dockerfile_instructions():
            if name != "COPY" or args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                self.assertTrue(os.path.exists(os.path.join(ROOT, source)), source)
                self.assertIn(source, allowed)

    def test_non_root_entrypoint(self) -> None:
        """It runs as a numeric non-root user, the exec-form ENTRYPOINT is the foreground
        twistd reading /etc/eventgw/gateway.yaml, without a pid file."""
        instructions = _dockerfile_instructions()
        users = [args for name, args in instructions if name == "USER"]
        self.assertEqual(len(users), 1)
        uid = users[0].split(":")[0]
        self.assertTrue(uid.isdigit() and int(uid) != 0, uid)
        pod = _only("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
        self.assertEqual(int(uid), pod["securityContext"]["runAsUser"])
        entrypoints = [args for name, args in instructions if name == "ENTRYPOINT"]
        self.assertEqual(len(entrypoints), 1)
        self.assertEqual(yaml.safe_load(entrypoints[0]), ENTRYPOINT)
        exposed = {int(p) for name, args in instructions if name == "EXPOSE"
                   for p in args.split()}
        self.assertEqual(exposed, {9001, 9080, ADMIN_PORT})

    def test_plugin_cache_written_at_build(self) -> None:
        """twistd's plugin cache is written at build time (the root file system is
        read-only at run time), and the entry point is installed with the package."""
        runs = " ".join(args for name, args in _dockerfile_instructions() if name == "RUN")
        self.assertIn("getPlugins(IPlugin)", runs)
        self.assertTrue(os.path.exists(os.path.join(ROOT, "twisted", "plugins",
                                                    "eventgw_plugin.py")))


def _unit_entries() -> dict[str, dict[str, list[str]]]:
    """The unit file as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    with open(UNIT) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            header = re.fullmatch(r"\[(\w+)\]", line)
            if header:
                current = sections.setdefault(header.group(1), {})
                continue
            assert current is not None, line
            key, sep, value = line.partition("=")
            assert sep, line
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


class SystemdUnitTests(SynchronousTestCase):
    def test_keys(self) -> None:
        """The unit starts twistd in the foreground without a pid file, reloads with
        SIGHUP, signals the main process first (KillMode=mixed) and waits longer than the
        drain timeout before it kills."""
        service = _unit_entries()["Service"]
        exec_start = service["ExecStart"][0].split()
        self.assertTrue(exec_start[0].endswith("/twistd"))
        self.assertEqual(exec_start[1:], ENTRYPOINT[1:])
        self.assertEqual(service["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(service["KillMode"], ["mixed"])
        self.assertEqual(service.get("KillSignal", ["SIGTERM"]), ["SIGTERM"])
        self.assertGreater(_seconds(service["TimeoutStopSec"][0]), DRAIN_TIMEOUT)

    def test_hardening(self) -> None:
        """No new privileges, a read-only system, an unprivileged (dynamic) user, no
        capabilities, and the one writable directory the state directory."""
        service = _unit_entries()["Service"]
        expected = {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "DynamicUser": "yes",
            "CapabilityBoundingSet": "",
            "RestrictSUIDSGID": "yes",
            "StateDirectory": "eventgw",
            "WorkingDirectory": "/var/lib/eventgw",
        }
        for key, value in expected.items():
            self.assertEqual(service.get(key), [value], key)
        self.assertNotIn("User", service)
        self.assertIn("multi-user.target", _unit_entries()["Install"]["WantedBy"])

    def test_systemd_analyze_verify(self) -> None:
        """``systemd-analyze verify`` finds nothing to complain about, with ExecStart
        pointed at this machine's twistd (the unit's /opt/eventgw is not installed here)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (the keys are parsed by "
                           "test_keys and test_hardening)")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.access(twistd, os.X_OK):
            raise SkipTest(f"no twistd beside {sys.executable}")
        with open(UNIT) as f:
            text = f.read().replace("/opt/eventgw/bin/twistd", twistd)
        folder = tempfile.mkdtemp(prefix="eventgw-unit-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "eventgw.service")
        with open(path, "w") as f:
            f.write(text)
        result = subprocess.run([analyze, "verify", path], capture_output=True, text=True,
                                timeout=60, check=False)
        self.assertEqual((result.returncode, result.stderr, result.stdout), (0, "", ""))
