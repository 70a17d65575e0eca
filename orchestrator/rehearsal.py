"""The cloud cluster's services as local processes: rehearse a cluster sweep (and its faults) on one machine.

``cluster.yaml`` gives a head node an authenticated MLflow server on 127.0.0.1 and workers that come and
go. Here the same parts are real processes on this machine: :class:`MlflowServer` is ``mlflow server
--app-name basic-auth`` on a SQLite backend, restartable on the same port and store (so an outage can be
staged), and :func:`local_cluster` is Ray's own multi-node ``Cluster``: a head with no CPUs and worker
raylets, each with its own object store and its own temp directory. The tests and ``benchmarks/chaos.py`` use both.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OBJECT_STORE = 150 * 2**20  # per node: the rehearsal pools are small


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server --app-name basic-auth`` bound to 127.0.0.1; the admin password lives in a 0600 file and
    in :attr:`credentials` (for a driver's environment), never on a command line.

    ``auth=False`` serves without the auth app: each authenticated request pays a password-hash check, which
    on two busy cores is most of a request's time, so tests about something other than auth run without it.

    ``workers`` defaults to one uvicorn worker, not MLflow's four: a rehearsal server serves one sweep, and
    each worker imports the whole server, which on two cores made a start take 11-13 s instead of 6-7 s.
    """

    def __init__(self, root: str | Path, user: str = "alvlm", port: int | None = None, auth: bool = True,
                 backend_uri: str | None = None, workers: int = 1):
        self.auth, self.workers = auth, workers
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, secrets.token_urlsafe(16)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.backend_uri = backend_uri or f"sqlite:///{self.root}/mlflow.db"
        self.ini = self.root / "auth.ini"
        self.ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{self.root}/auth.db\n"
                            f"admin_username = {user}\nadmin_password = {self.password}\n"
                            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        self.ini.chmod(0o600)
        self.secret = secrets.token_hex(16)

    @property
    def credentials(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.user, "MLFLOW_TRACKING_PASSWORD": self.password} if self.auth else {}

    def start(self, timeout: float = 90) -> "MlflowServer":
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(self.ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *(["--app-name", "basic-auth"] if self.auth else []),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
             "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", str(self.root / "artifacts")],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited at start-up (code {self.proc.returncode})") from None
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer at {self.uri} within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the server and its gunicorn/uvicorn workers (an outage, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def find_postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian keeps them off PATH), or None if not installed."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class LocalPostgres:
    """A throwaway PostgreSQL server (``initdb`` + ``postgres`` on 127.0.0.1) for MLflow's backend store.

    The cluster's MLflow may use PostgreSQL when several writers share it; this stands one up on this
    machine to prove the sweep logs through it. PostgreSQL refuses to run as root, so under root the
    programs run as the ``postgres`` user on a directory handed to it.
    """

    def __init__(self, database: str = "mlflow"):
        self.bin = find_postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.database, self.port = database, free_port()
        self.data = Path(tempfile.mkdtemp(prefix="alvlm-pg-"))
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(self.bin / program), *args], check=True, capture_output=True,
                       timeout=120, cwd=self.data)

    def start(self, timeout: float = 60) -> "LocalPostgres":
        self._run("initdb", "-D", str(self.data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.proc = subprocess.Popen(
            [*self.as_owner, str(self.bin / "postgres"), "-D", str(self.data / "db"), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.data)], cwd=self.data, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if probe.returncode == 0:
                self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start-up (code {self.proc.returncode})")
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"postgres did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # "smart" shutdown: a clean stop, not an outage
            self.proc.wait(timeout=60)
        self.proc = None
        shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def local_cluster(workers: int = 2, worker_cpus: float = 1, dashboard: bool = False):
    """A head with no CPUs (so every trial lands on a worker) and ``workers`` worker raylets, all started."""
    from ray.cluster_utils import Cluster

    # the head's agent gets a free port too: on Ray's default (52365) it collides with any other Ray on this
    # machine (a test session's own), and the Jobs API then answers "No available agent" for good
    head = {"num_cpus": 0, "object_store_memory": OBJECT_STORE, "dashboard_agent_listen_port": free_port()}
    if dashboard:
        head.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port())
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    for _ in range(workers):
        add_worker(cluster, worker_cpus)
    cluster.wait_for_nodes()
    return cluster


def add_worker(cluster, cpus: float = 1):
    """A worker raylet with a temp directory of its own, as a real node has its own disk.

    On a shared temp directory every node unpacks a job's ``--working-dir`` into the same folder, each
    replacing the last, so a ``ray job submit`` driver lost its current directory as soon as a task ran on a
    worker (and torch then failed to load inside it).
    """
    temp_dir = tempfile.mkdtemp(prefix="alvlm-node-")
    atexit.register(shutil.rmtree, temp_dir, ignore_errors=True)
    return cluster.add_node(num_cpus=cpus, object_store_memory=OBJECT_STORE, temp_dir=temp_dir)
