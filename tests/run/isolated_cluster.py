"""A local Ray cluster whose worker nodes cannot read the driver's files.

The head node runs as usual on 127.0.0.3; each worker node (127.0.0.4, ...) runs ``ray start``
inside its own mount namespace (``unshare -m``) with an empty tmpfs mounted over ``hidden``, so
every process of that node (raylet, evaluators, env runners) sees an empty folder where the
driver keeps its run folder, working directory and model cache: the situation of machines that
share no disk. Everything stays on loopback addresses. Needs root (CI and dev machines are).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["IsolatedCluster", "alive_nodes", "free_port", "namespaces_available"]

HEAD_IP = "127.0.0.3"


def namespaces_available() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs t /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def free_port(host: str = HEAD_IP) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def alive_nodes(address: str, env: dict[str, str], timeout_s: float = 60.0) -> int:
    """Alive nodes of the cluster at ``address``, asked from a separate process (the test's
    own process keeps its own Ray); 0 when it does not answer in ``timeout_s``."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
        "print('alive', sum(1 for n in ray.nodes() if n['Alive']))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe, address],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:  # a loaded machine: the caller probes again
        return 0
    # an autoscaler's events may print on stdout too: read the probe's own line
    counts = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("alive ")]
    return int(counts[-1]) if done.returncode == 0 and counts else 0


class IsolatedCluster:
    def __init__(
        self,
        hidden: Path,
        log_dir: Path,
        workers: int = 2,
        worker_cpus: int = 2,
        worker_gpus: int = 1,
        head_cpus: int = 2,
    ) -> None:
        self.hidden = Path(hidden)
        self.log_dir = Path(log_dir)
        self.workers = workers
        self.worker_cpus = worker_cpus
        self.worker_gpus = worker_gpus
        self.head_cpus = head_cpus
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}

    def _ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))

    def _spawn(self, command: list[str], name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("w")
        self.processes.append(
            subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd="/",
                start_new_session=True,
            )
        )

    def start(self, timeout_s: float = 300.0) -> IsolatedCluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        common = ["--include-dashboard=false", "--disable-usage-stats", "--block"]
        self._spawn(
            [
                self._ray(),
                "start",
                "--head",
                f"--node-ip-address={HEAD_IP}",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                *common,
            ],
            "head",
        )
        self._wait_for(1, timeout_s)
        for index in range(self.workers):
            start = " ".join(
                [
                    self._ray(),
                    "start",
                    f"--address={self.address}",
                    f"--node-ip-address=127.0.0.{4 + index}",
                    f"--num-cpus={self.worker_cpus}",
                    f"--num-gpus={self.worker_gpus}",
                    # several nodes on one machine: each agent gets its own ports
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--dashboard-agent-grpc-port={free_port()}",
                    f"--runtime-env-agent-port={free_port()}",
                    f"--metrics-export-port={free_port()}",
                    "--disable-usage-stats",
                    "--block",
                ]
            )
            self._spawn(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    f"mount -t tmpfs ajpq-hidden {self.hidden} && exec {start}",
                ],
                f"worker{index}",
            )
            self._wait_for(2 + index, timeout_s)
        return self

    def _wait_for(self, nodes: int, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if any(process.poll() is not None for process in self.processes):
                break
            wait_s = max(1.0, min(60.0, deadline - time.time()))
            if alive_nodes(self.address, self.env, wait_s) >= nodes:
                return
            time.sleep(2)
        self.stop()
        logs = {p.name: p.read_text()[-1500:] for p in self.log_dir.glob("*.log")}
        raise RuntimeError(f"cluster did not reach {nodes} nodes: {logs}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=5)  # a node drains for up to 30 s: nothing to drain here
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        self.processes.clear()

    def __enter__(self) -> IsolatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
