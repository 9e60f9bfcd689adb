"""A team deployment on loopback: redis-server, gateway replicas, HAProxy in front (tests and benchmarks).

The HAProxy config and the systemd unit the README shows are rendered here,
from `haproxy.cfg.tmpl` and `model-gateway@.service.tmpl` beside this file and
from the same replica command line and environment the test starts replicas
with; a test keeps the README's blocks equal to these renderings.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import shutil
import socket
import string
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.proc import stop
from tests.support.processes import ROOT, free_port, gateway_argv, gateway_env, ollama_manifests, wait_http
from tests.support.redis_server import MISSING as REDIS_MISSING
from tests.support.redis_server import redis_server, run_redis

HERE = Path(__file__).resolve().parent
HAPROXY_MISSING = "haproxy is not installed (Debian: apt-get install haproxy; `bash .ci/test` does it as root)"


@dataclass(frozen=True)
class Layout:
    """Where replicas keep their files and find the shared pieces; each replica gets its own state and cache."""

    shared_state: str
    state_root: str
    cache_root: str
    models_dir: str
    tokens_file: str
    manifests: str


# What the README's examples are rendered with.
README_LAYOUT = Layout(
    shared_state="redis://127.0.0.1:6379/0",
    state_root="/var/lib/model-gateway",
    cache_root="/var/cache/model-gateway",
    models_dir="/var/cache/model-gateway/models",
    tokens_file="/etc/model-gateway/tokens.json",
    manifests="/etc/model-gateway/manifests",
)
README_PORTS = ("8765", "8766", "8767")
README_ALLOWED_HOST = "gateway.example.org:8080"


def replica_args(layout: Layout, port: str, allowed_hosts: Sequence[str] = ()) -> list[str]:
    args = ["serve", "--transport", "streamable-http", "--stateless", "--port", port, "--manifests", layout.manifests]
    for host in allowed_hosts:
        args += ["--allowed-host", host]
    return args


def replica_env(layout: Layout, port: str) -> dict[str, str]:
    return {
        "MODEL_GATEWAY_SHARED_STATE": layout.shared_state,
        "MODEL_GATEWAY_STATE_DIR": f"{layout.state_root}/replica-{port}",
        "MODEL_GATEWAY_CACHE_DIR": f"{layout.cache_root}/replica-{port}",
        "MODEL_GATEWAY_MODELS_DIR": layout.models_dir,
        "MODEL_GATEWAY_AUTH_TOKENS_FILE": layout.tokens_file,
    }


@dataclass(frozen=True)
class Balancer:
    """HAProxy's side of a deployment: where it listens, the Host its clients name, its stats socket."""

    frontend: str
    host: str  # what clients put in Host (the replicas allow it); health checks name it too
    stats_socket: str
    check_interval: str
    maxconn: int = 256


def render_haproxy(lb: Balancer, replicas: Sequence[str]) -> str:
    servers = "\n".join(f"    server r{i} {address}" for i, address in enumerate(replicas, 1))
    template = string.Template((HERE / "haproxy.cfg.tmpl").read_text())
    return template.substitute(
        frontend=lb.frontend,
        check_host=lb.host,
        servers=servers,
        stats_socket=lb.stats_socket,
        check_interval=lb.check_interval,
        maxconn=lb.maxconn,
    )


def render_unit(layout: Layout, executable: str, allowed_hosts: Sequence[str]) -> str:
    env = "\n".join(f"Environment={k}={v}" for k, v in replica_env(layout, "%i").items())
    exec_start = " ".join([executable, *replica_args(layout, "%i", allowed_hosts)])
    template = string.Template((HERE / "model-gateway@.service.tmpl").read_text())
    return template.substitute(environment=env, exec_start=exec_start)


def readme_haproxy() -> str:
    replicas = [f"127.0.0.1:{p}" for p in README_PORTS]
    lb = Balancer(":8080", README_ALLOWED_HOST, "/run/haproxy/model-gateway.sock", "2s", maxconn=2048)
    return render_haproxy(lb, replicas)


def readme_unit() -> str:
    return render_unit(README_LAYOUT, "/opt/model-gateway/.venv/bin/model-gateway", [README_ALLOWED_HOST])


def token_for(principal: str) -> str:
    return f"token-of-{principal}"


def write_tokens(path: Path, principals: Sequence[str]) -> Path:
    tokens = [{"sha256": hashlib.sha256(token_for(p).encode()).hexdigest(), "subject": p} for p in principals]
    path.write_text(json.dumps({"tokens": tokens}))
    return path


def haproxy_servers(stats_socket: Path, backend: str = "replicas") -> dict[str, str]:
    """Server name -> status (UP, DOWN, ...) from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(stats_socket))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode().lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == backend and r["svname"] not in ("BACKEND",)}


def wait_until(check: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} within {deadline_s} s")
        time.sleep(0.05)


@dataclass
class Deployment:
    lb: str
    redis_url: str
    stats_socket: Path
    state_root: Path  # every replica's state dir is a folder in here: `audit verify` over it checks every trail
    replicas: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    state_dirs: dict[str, Path] = field(default_factory=dict)

    def audit_logs(self) -> dict[str, Path]:
        return {name: d / "audit" / "audit.jsonl" for name, d in self.state_dirs.items()}

    def servers(self) -> dict[str, str]:
        return haproxy_servers(self.stats_socket)

    def marked(self, replica: str, status: str) -> bool:
        return self.servers().get(replica) == status


def haproxy() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def missing_tools() -> str | None:
    if redis_server() is None:
        return REDIS_MISSING
    if haproxy() is None:
        return HAPROXY_MISSING
    return None


@contextlib.contextmanager
def deployment(
    root: Path,
    ollama_url: str,
    replicas: int = 3,
    principals: Sequence[str] = ("team",),
    performance: Mapping[str, Any] | None = None,
    check_interval: str = "200ms",
) -> Iterator[Deployment]:
    """redis-server, `replicas` gateways (each with its own state dir under `root`) and HAProxy, all on loopback."""
    manifests = ollama_manifests(root / "manifests", ollama_url)
    (manifests / "performance-config.json").write_text(json.dumps(performance or {}))
    with run_redis(root / "redis") as redis_url, contextlib.ExitStack() as stack:
        layout = Layout(
            redis_url,
            str(root / "state"),
            str(root / "cache"),
            str(root / "models"),
            str(write_tokens(root / "tokens.json", principals)),
            str(manifests),
        )
        ports = [str(free_port()) for _ in range(replicas)]
        found = Deployment(f"http://127.0.0.1:{free_port()}", redis_url, root / "haproxy.sock", root / "state")
        for i, port in enumerate(ports, 1):
            proc = _replica(root, layout, port, f"r{i}")
            stack.callback(stop, proc, 15)
            found.replicas[f"r{i}"] = proc
            found.state_dirs[f"r{i}"] = Path(replica_env(layout, port)["MODEL_GATEWAY_STATE_DIR"])
        for (name, proc), port in zip(found.replicas.items(), ports, strict=True):
            try:
                wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}: {(root / f'{name}.log').read_text()[-2000:]}") from exc
        frontend = found.lb.removeprefix("http://")
        lb = Balancer(frontend, frontend, str(found.stats_socket), check_interval)
        cfg = render_haproxy(lb, [f"127.0.0.1:{p}" for p in ports])
        (root / "haproxy.cfg").write_text(cfg)
        lb = _haproxy(root)
        stack.callback(stop, lb, 10)
        wait_until(lambda: lb.poll() is not None or found.stats_socket.exists(), 10, "HAProxy did not start")
        if lb.poll() is not None:
            raise RuntimeError(f"haproxy exited: {(root / 'haproxy.log').read_text()[-2000:]}")
        wait_until(lambda: set(found.servers().values()) == {"UP"}, 10, "HAProxy did not see every replica up")
        yield found


def _replica(root: Path, layout: Layout, port: str, name: str) -> subprocess.Popen[bytes]:
    env = gateway_env(root / "home", replica_env(layout, port))
    with (root / f"{name}.log").open("wb") as log:
        argv = gateway_argv(*replica_args(layout, port)[1:])
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def _haproxy(root: Path) -> subprocess.Popen[bytes]:
    exe = haproxy()
    assert exe is not None
    with (root / "haproxy.log").open("wb") as log:
        argv = [exe, "-db", "-f", str(root / "haproxy.cfg")]
        return subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
