"""A local Ray cluster with Ray's own autoscaler and its ``fake_multinode`` provider: the head
has no GPU; a GPU worker type (``min_workers: 0``) is started as local raylets only when some
request asks for it, exactly as a cloud autoscaler starts machines.

Everything runs in one process group started here (head, GCS, autoscaler monitor and the
worker raylets it starts), stopped by that group's id; loopback addresses only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .isolated_cluster import alive_nodes, free_port

__all__ = ["AutoscalingCluster"]

HOST = "127.0.0.1"


class AutoscalingCluster:
    def __init__(
        self,
        folder: Path,
        head_cpus: int = 2,
        worker: dict[str, float] | None = None,
        max_workers: int = 1,
    ) -> None:
        self.folder = Path(folder)
        self.port = free_port(HOST)
        self.address = f"{HOST}:{self.port}"
        self.head_cpus = head_cpus
        self.worker = worker or {"CPU": 2, "GPU": 1}
        self.max_workers = max_workers
        self.process: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _config(self) -> Path:
        config = {
            "cluster_name": f"ajpq-fake-{self.port}",
            "max_workers": self.max_workers,
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5,
            "provider": {
                "type": "fake_multinode",
                "gcs_address": self.address,
                # the nodes share this machine's IP, and none is reached over SSH
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": {
                "ray.head.default": {
                    "resources": {"CPU": self.head_cpus},
                    "node_config": {},
                    "max_workers": 0,
                },
                "gpu_worker": {
                    "resources": self.worker,
                    "node_config": {},
                    "min_workers": 0,
                    "max_workers": self.max_workers,
                },
            },
            "head_node_type": "ray.head.default",
            **{
                key: []
                for key in (
                    "cluster_synced_files",
                    "rsync_exclude",
                    "rsync_filter",
                    "initialization_commands",
                    "setup_commands",
                    "head_setup_commands",
                    "worker_setup_commands",
                    "head_start_ray_commands",
                    "worker_start_ray_commands",
                )
            },
            "file_mounts": {},
            "file_mounts_sync_continuously": False,
        }
        path = self.folder / "autoscaler.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def start(self, timeout_s: float = 120.0) -> AutoscalingCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "head.log").open("w")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("ray")),
                "start",
                "--head",
                f"--node-ip-address={HOST}",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                f"--autoscaling-config={self._config()}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--block",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.folder,
            start_new_session=True,
        )
        deadline = time.time() + timeout_s
        try:
            while time.time() < deadline:
                if self.nodes() >= 1:
                    return self
                if self.process.poll() is not None:
                    break
                time.sleep(1.0)
        except BaseException:
            self.stop()  # nothing this test started may outlive it
            raise
        self.stop()
        raise RuntimeError(f"head did not start: {(self.folder / 'head.log').read_text()[-2000:]}")

    def nodes(self) -> int:
        """Alive nodes (asked from a separate process: this one keeps its own Ray)."""
        return alive_nodes(self.address, self.env)

    def stop(self) -> None:
        """End the head's process group: the head, its autoscaler and the raylets it started."""
        if self.process is None:
            return
        group = self.process.pid
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        # the raylets the autoscaler started share the group: none may outlive it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process = None

    def __enter__(self) -> AutoscalingCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
