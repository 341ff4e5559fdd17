"""A Spark standalone cluster on 127.0.0.1 for tests: one master and one worker, each its own JVM started with
pyspark's ``bin/spark-class`` (the pip package ships no sbin start scripts), on free ports, with the worker's
directory under the test's tmp dir. Jobs reach it with ``spark-submit --master spark://127.0.0.1:PORT`` in
client mode, as a new user would run them on a cluster: executors are separate processes with their own
working directory, not threads of a ``local[N]`` driver."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StandaloneCluster:
    master_url: str
    ui_url: str
    cores: int
    root: Path
    processes: list

    def env(self, **extra) -> dict:
        """The environment for spark-submit and the cluster's Python workers: this interpreter everywhere."""
        return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", **extra}

    def submit_argv(self, script: str | Path, *args: str, conf: dict | None = None) -> list[str]:
        settings = {"spark.ui.enabled": "false", "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
                    "spark.pyspark.python": sys.executable, "spark.driver.host": "127.0.0.1",
                    "spark.executor.memory": "2g", **(conf or {})}
        argv = [str(SPARK_SUBMIT), "--master", self.master_url, "--deploy-mode", "client"]
        for key, value in settings.items():
            argv += ["--conf", f"{key}={value}"]
        return argv + [str(script), *args]

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as response:
            return json.loads(response.read())

    def running_apps(self) -> list:
        return self.state().get("activeapps", [])

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def start_cluster(root: Path, *, cores: int = 2, memory: str = "6g", timeout: float = 90) -> StandaloneCluster:
    """Start a master and one worker of ``cores`` cores; returns when the worker is registered and ALIVE.
    Raises RuntimeError with the JVMs' log tails when it is not up within ``timeout`` seconds."""
    root.mkdir(parents=True, exist_ok=True)
    port, ui_port = free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
    master_log = open(root / "master.log", "wb")
    master = subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui_port)], env=env, stdout=master_log,
                              stderr=subprocess.STDOUT, cwd=root)
    master_url, ui_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    worker_log = open(root / "worker.log", "wb")
    work_dir = root / "work"
    worker = subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", master_url,
                               "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
                               "--work-dir", str(work_dir), "--webui-port", str(free_port())],
                              env=env, stdout=worker_log, stderr=subprocess.STDOUT, cwd=root)
    cluster = StandaloneCluster(master_url=master_url, ui_url=ui_url, cores=cores, root=root,
                                processes=[master, worker])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if master.poll() is not None or worker.poll() is not None:
            break
        try:
            workers = cluster.state().get("workers", [])
            if any(w.get("state") == "ALIVE" for w in workers):
                return cluster
        except OSError:
            pass
        time.sleep(1)
    cluster.stop()
    logs = "\n".join(f"--- {name}\n{(root / name).read_text(errors='replace')[-3000:]}"
                     for name in ("master.log", "worker.log"))
    raise RuntimeError(f"the standalone cluster did not come up within {timeout} s:\n{logs}")
