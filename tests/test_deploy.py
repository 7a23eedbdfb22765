"""
Deployment artefacts: checked as far as a machine without a container engine can.

Kubernetes manifests and the rendered Helm chart validate against the
Kubernetes schemas, every gw.yaml they carry is a valid txgateway config, the
Dockerfile lints clean and keeps its promises (non-root, /ready health check),
and the systemd unit passes systemd-analyze.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from txgateway.config import parseConfig

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def k8sValidate(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def gatewayConfigsIn(docs: list[dict[str, Any]]) -> list[str]:
    return [d["data"]["gw.yaml"] for d in docs if d.get("kind") == "ConfigMap" and "gw.yaml" in d.get("data", {})]


class KubernetesTests(SynchronousTestCase):
    def test_manifestsValidateAgainstTheKubernetesSchemas(self) -> None:
        """Every manifest under deploy/kubernetes is a valid Kubernetes object; its gw.yaml a valid config."""
        docs = [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) if f.name != "kustomization.yaml"
                for d in yaml.safe_load_all(f.read_text()) if d]
        self.assertEqual({d["kind"] for d in docs},
                         {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"})
        k8sValidate(docs)
        for text in gatewayConfigsIn(docs):
            parseConfig(text)

    def test_probesUseReadyNeverBackendHealth(self) -> None:
        """Readiness and liveness hit /ready, so dead backends never restart the gateway; preStop precedes the drain."""
        deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/ready")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/ready")
        self.assertIn("preStop", container["lifecycle"])
        self.assertTrue(container["securityContext"]["readOnlyRootFilesystem"])
        config = parseConfig(yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())["data"]["gw.yaml"])
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        self.assertGreater(grace, config.server.timeouts.drain + 5)


class HelmTests(SynchronousTestCase):
    def helm(self) -> str:
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-helm.sh")], check=True)
        return str(REPO / ".venv" / "tools" / "helm")

    def test_chartLintsAndRendersValidManifests(self) -> None:
        """helm lint passes and helm template (with Redis on) renders valid Kubernetes objects and config."""
        helm = self.helm()
        chart = str(DEPLOY / "helm" / "txgateway")
        subprocess.run([helm, "lint", chart], check=True, capture_output=True)
        out = subprocess.run([helm, "template", "gw", chart, "--set", "redis.enabled=true"], check=True,
                             capture_output=True, text=True).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        self.assertIn("PodDisruptionBudget", {d["kind"] for d in docs})
        k8sValidate(docs)
        for text in gatewayConfigsIn(docs):
            parseConfig(text)


class ContainerTests(SynchronousTestCase):
    def test_dockerfileLintsClean(self) -> None:
        """hadolint finds nothing to warn about."""
        proc = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning", str(REPO / "Dockerfile")],
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_imageRunsNonRootWithAReadinessHealthCheck(self) -> None:
        """The image runs twistd -n txgateway as a non-root user and checks /ready."""
        text = (REPO / "Dockerfile").read_text()
        self.assertRegex(text, r"(?m)^USER 10001$")
        self.assertIn("/ready", text)
        self.assertIn('ENTRYPOINT ["twistd", "-n"', text)

    def test_defaultConfigOfTheImageLoadsOnItsOwn(self) -> None:
        """The final stage's COPY lines, replayed into an empty root, give a config `txgateway check` passes."""
        lines = (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        final = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
        cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
        config = cmd[cmd.index("--config") + 1]
        with tempfile.TemporaryDirectory() as root:
            for line in lines[final:]:
                words = line.split()
                if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
                    continue
                *sources, dest = words[1:]
                for source in sources:
                    src = REPO / source
                    target = Path(root + dest)
                    if dest.endswith("/"):
                        target = target / src.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if src.is_dir():
                        shutil.copytree(src, target)
                    else:
                        shutil.copyfile(src, target)
            self.assertTrue(Path(root + config).exists(), f"the image has no {config}")
            proc = subprocess.run([sys.executable, "-m", "txgateway", "check", root + config],
                                  capture_output=True, text=True, cwd=root)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_composeRunsGatewayTwoBackendsAndRedis(self) -> None:
        """The compose file has the gateway, two demo backends and Redis; its gw.yaml is valid."""
        compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
        self.assertEqual(set(compose["services"]), {"gateway", "backend-a", "backend-b", "redis"})
        self.assertTrue(compose["services"]["gateway"]["read_only"])
        config = parseConfig((DEPLOY / "compose-gw.yaml").read_text())
        self.assertEqual(config.stores.redis, "redis://redis:6379/0")


class SystemdTests(SynchronousTestCase):
    def test_unitVerifies(self) -> None:
        """systemd-analyze verify accepts the unit (with the install paths pointed at this venv)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", "systemd"], check=True, capture_output=True)
            analyze = shutil.which("systemd-analyze")
        assert analyze is not None
        unit = (DEPLOY / "txgateway.service").read_text().replace("/opt/txgateway/bin", str(BIN))
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d, "txgateway.service")
            path.write_text(unit)
            proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
        problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                    if "txgateway.service" in line and "User" not in line]
        self.assertEqual(problems, [])
