"""The service Dockerfiles, linted without a Docker engine.

Static checks parse each Dockerfile: pinned bases, multi-stage, a non-root final stage without
build tools, the uv workspace lock, ports and names consistent with the chart. A replay then
runs each builder stage's own `uv sync` commands on a copy of the workspace laid out the way the
Dockerfile's COPY steps lay it out, and imports the service from the resulting environment.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, ROOT

pytestmark = pytest.mark.integration

SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|git|[a-z0-9.+-]+-dev)\b")
PINNED = {
    "python": re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[a-f0-9]{64})?$"),
    "uv": re.compile(r"^ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+(@sha256:[a-f0-9]{64})?$"),
}


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, cmd: str) -> list[str]:
        return [args for c, args in self.instructions if c == cmd]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        buf = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not buf and (not line or line.startswith("#")):
                continue
            if line.startswith("#"):
                continue  # comment inside a continued instruction
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            logical.append(buf + line)
            buf = ""
        args: dict[str, str] = {}
        stages: list[Stage] = []
        for line in logical:
            cmd, _, rest = line.partition(" ")
            cmd = cmd.upper()
            if cmd == "ARG" and not stages:
                k, _, v = rest.partition("=")
                args[k.strip()] = v.strip()
            elif cmd == "FROM":
                parts = rest.split()
                image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
                name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
                stages.append(Stage(image, name))
            else:
                stages[-1].instructions.append((cmd, rest))
        return cls(args, stages)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _assignments(env_line: str) -> dict[str, str]:
    """KEY=value pairs of an ENV instruction."""
    return dict(kv.split("=", 1) for kv in shlex.split(env_line))


def pyproject(service: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())


def module_of(service: str) -> str:
    (pkg,) = pyproject(service)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return Path(pkg).name


def chart_component(service: str) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return next(c for c in values["components"].values() if c["serviceName"] == service)


def test_every_service_has_a_dockerfile() -> None:
    assert SERVICES == ["agent-worker", "billing-svc", "kb-svc", "router-svc", "vision-svc"]
    for service in SERVICES:
        assert (ROOT / "services" / service / "Dockerfile").is_file(), service
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert sorted(c["serviceName"] for c in values["components"].values()) == SERVICES


@pytest.mark.parametrize("service", SERVICES)
def test_bases_are_pinned_and_stages_split(service: str) -> None:
    df = Dockerfile.parse(ROOT / "services" / service / "Dockerfile")
    assert [s.name for s in df.stages] == ["uv", "workspace-manifests", "builder", "runtime"]
    for stage in df.stages:
        kind = "uv" if "astral-sh/uv" in stage.image else "python"
        assert PINNED[kind].match(stage.image), f"{service}: unpinned base {stage.image}"
    runtime = df.stage("runtime")
    assert runtime.image == df.stage("builder").image  # the venv's interpreter path must exist


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_is_non_root_and_has_no_build_tools(service: str) -> None:
    df = Dockerfile.parse(ROOT / "services" / service / "Dockerfile")
    runtime = df.stage("runtime")
    assert runtime.all("USER") == ["10001:10001"]
    # USER comes after every RUN, so nothing in the image runs as root at start-up.
    cmds = [c for c, _ in runtime.instructions]
    assert cmds.index("USER") > max(i for i, c in enumerate(cmds) if c == "RUN")
    assert any("--uid 10001" in r for r in runtime.all("RUN"))
    for run in runtime.all("RUN"):
        if "apt-get install" in run:
            packages = run.split("apt-get install", 1)[1].split("&&")[0]
            assert not BUILD_TOOLS.search(packages), (
                f"{service}: build tools in final stage: {packages}"
            )
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run
    for copy in runtime.all("COPY"):
        assert copy.startswith("--from=builder /app/.venv"), f"{service}: final stage copies {copy}"
    assert not any("uv" in c for c in runtime.all("RUN"))


@pytest.mark.parametrize("service", SERVICES)
def test_builder_installs_from_the_lock(service: str) -> None:
    df = Dockerfile.parse(ROOT / "services" / service / "Dockerfile")
    dist = pyproject(service)["project"]["name"]
    syncs = [r for r in df.stage("builder").all("RUN") if "uv sync" in r]
    assert len(syncs) == 2
    for sync in syncs:
        for flag in ("--frozen", "--no-dev", f"--package {dist}"):
            assert flag in sync, (service, flag)
    assert "--no-install-workspace" in syncs[0] and "--no-editable" in syncs[1]
    # The manifests stage must see every workspace member the root pyproject declares.
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    manifests = df.stage("workspace-manifests")
    copied = {c.split()[0].rstrip("/") for c in manifests.all("COPY")}
    for member in root["tool"]["uv"]["workspace"]["members"]:
        assert member.split("/")[0] in copied, member


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_ports_and_names_match_the_chart(service: str) -> None:
    df = Dockerfile.parse(ROOT / "services" / service / "Dockerfile")
    runtime = df.stage("runtime")
    comp = chart_component(service)
    (entry,) = runtime.all("ENTRYPOINT")
    assert yaml.safe_load(entry) == ["python", "-m", module_of(service)]
    assert (ROOT / "services" / service / "src" / module_of(service) / "__init__.py").is_file()
    (expose,) = runtime.all("EXPOSE")
    assert sorted(map(int, expose.split())) == sorted(comp["ports"].values())
    env = {k: v for line in runtime.all("ENV") for k, v in _assignments(line).items()}
    assert env["PARLEY_SERVICE_NAME"] == service
    assert env["PARLEY_HOST"] == "0.0.0.0"
    assert int(env["PARLEY_METRICS_PORT"]) == comp["ports"]["metrics"]
    if "grpc" in comp["ports"]:
        assert int(env["PARLEY_GRPC_PORT"]) == comp["ports"]["grpc"]
    assert runtime.all("STOPSIGNAL") == ["SIGTERM"]
    assert runtime.all("HEALTHCHECK")
    cmd = runtime.all("CMD")
    assert [yaml.safe_load(c) for c in cmd] == ([comp["args"]] if comp["args"] else [])


def test_agent_worker_image_can_speak() -> None:
    runtime = Dockerfile.parse(ROOT / "services" / "agent-worker" / "Dockerfile").stage("runtime")
    assert any(re.search(r"apt-get install .*\bespeak-ng\b", r) for r in runtime.all("RUN"))


def test_recommended_dockerignore() -> None:
    lines = (ROOT / "deploy" / "docker" / "dockerignore").read_text().splitlines()
    rules = [x for x in lines if x and not x.startswith("#")]
    assert rules[0] == "*"
    for keep in ("!pyproject.toml", "!uv.lock", "!libs/", "!services/", "!tools/"):
        assert keep in rules
    for drop in ("**/.venv", "**/__pycache__", "**/tests", "**/.env"):
        assert drop in rules


# --- replay of the builder stage ----------------------------------------------------------------


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(
        src,
        dst,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".venv", "__pycache__", "*.pyc", "tests", ".pytest_cache"),
    )


@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("uv") is None, reason="uv not installed")
@pytest.mark.parametrize("service", SERVICES)
def test_builder_stage_replays(service: str, tmp_path: Path) -> None:
    df = Dockerfile.parse(ROOT / "services" / service / "Dockerfile")
    builder = df.stage("builder")
    env = dict(os.environ)
    for line in builder.all("ENV"):
        env.update(_assignments(line))
    src, venv = tmp_path / "src", tmp_path / "venv"
    # Paths of this machine instead of the image's; bytecode compilation skipped for speed.
    env.update(
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON=sys.executable,
        UV_COMPILE_BYTECODE="0",
        UV_LINK_MODE="hardlink"
        if os.stat(tmp_path).st_dev == os.stat(Path.home()).st_dev
        else "copy",
    )
    env.pop("VIRTUAL_ENV", None)
    # workspace-manifests stage: the lock, the root project and every member's pyproject.toml.
    src.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy2(ROOT / name, src / name)
    for member in sorted(ROOT.glob("*/*/pyproject.toml")):
        rel = member.relative_to(ROOT)
        if rel.parts[0] in ("libs", "services", "tools"):
            (src / rel.parent).mkdir(parents=True, exist_ok=True)
            shutil.copy2(member, src / rel)

    def run(sync: str) -> None:
        cmd = re.sub(r"--mount=\S+\s*", "", sync).strip()
        proc = subprocess.run(
            cmd, shell=True, cwd=src, env=env, capture_output=True, text=True, timeout=800
        )
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-4000:]}"

    first, second = [r for r in builder.all("RUN") if "uv sync" in r]
    run(first)
    # Dependencies only: no workspace package is installed yet.
    assert (
        subprocess.run(
            [venv / "bin" / "python", "-c", f"import {module_of(service)}"], capture_output=True
        ).returncode
        != 0
    )
    copies = [c for c in builder.all("COPY") if not c.startswith("--from")]
    assert copies == ["libs/ libs/", f"services/{service}/ services/{service}/"]
    for copy in copies:
        _copy_tree(ROOT / copy.split()[0], src / copy.split()[1])
    run(second)
    module = module_of(service)
    probe = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            f"import {module}, parley_runtime; print({module}.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    # Installed as a wheel into the venv, not an editable pointer back at the sources.
    assert str(venv) in probe.stdout, probe.stdout
    dev_tool = subprocess.run([venv / "bin" / "python", "-c", "import pytest"], capture_output=True)
    assert dev_tool.returncode != 0, "dev dependencies leaked into the image"
