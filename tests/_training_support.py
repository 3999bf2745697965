"""Shared helpers of the training-job tests: a real ``mlflow server`` and one trained model.

``conftest.load_test_helper`` loads this file under the name :data:`MODULE_NAME` in ``sys.modules`` (the tests
directory is not a package under ``--import-mode=importlib``), so the process-wide caches
below are shared by every module of the session: the tracking server starts once and the
model is trained once. The server is stopped by the finalizer of conftest's ``trained`` fixture.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODULE_NAME = "trustfeed_tests_training_support"
SERVER_START_TIMEOUT = 90.0
SERVER_STOP_TIMEOUT = 3.0

# tiny but learnable: enough requests for a validation window, few boosting rounds
TINY_PLATFORM = {"seed": 3, "merchants": 60, "days": 28}
TINY_MODEL = {"num_rounds": 25, "early_stopping_rounds": 10, "min_data_in_leaf": 20, "num_leaves": 15}


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TrackingServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend and a served local artifact root.

    Started in its own process group so :meth:`stop` ends the server and its uvicorn worker
    (and nothing else). Every wait is bounded.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> TrackingServer:
        return self.launch().wait_ready(timeout)

    def launch(self) -> TrackingServer:
        """Start the process and return at once (see :meth:`wait_ready`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [
            str(mlflow_cli), "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--serve-artifacts", "--workers", "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # The tests log runs and models only; MLflow's job runner (one huey consumer process per
        # job type, started with the server) is not used and made the start-up slow on a busy machine.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env, cwd=self.root)
        return self

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> TrackingServer:
        """Wait (bounded) until the server answers ``/health``; stop it and raise otherwise."""
        if self.process is None:
            raise RuntimeError("the server was not launched")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early ({self.process.returncode}): {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f}s: {self._log_tail()}")

    def stop(self, timeout: float = SERVER_STOP_TIMEOUT) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        # the uvicorn worker and MLflow's job runner share the group and may outlive the parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"


class TcpProxy:
    """A TCP relay in front of a server; :meth:`close` makes the server "go away".

    Clients talk to :attr:`uri`; closing the relay drops every open connection and refuses
    new ones, exactly what a client sees when a tracking server dies, without the cost of
    starting a second ``mlflow server``.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@dataclass
class TrainedModel:
    """The session's one trained model and where it lives."""

    server: TrackingServer
    result: Any  # trustfeed.training.train.TrainResult
    config: Any  # trustfeed.training.train.TrainJobConfig
    registered_name: str
    events_dir: Path
    output_dir: Path


_CACHE: dict[str, Any] = {}


def shared_server(root: Path, wait: bool = True) -> TrackingServer:
    """The session's tracking server (launched on first use; ``wait``: until it answers)."""
    server = _CACHE.get("server")
    if server is None or server.process is None:
        server = TrackingServer(root).launch()
        _CACHE["server"] = server
        _CACHE["server_ready"] = False
    if wait and not _CACHE["server_ready"]:
        try:
            server.wait_ready()
        except BaseException:
            _CACHE.pop("server", None)
            raise
        _CACHE["server_ready"] = True
    return server


def stop_shared_server() -> None:
    server = _CACHE.pop("server", None)
    _CACHE["server_ready"] = False
    if server is not None:
        server.stop()


def tiny_events(root: Path) -> Path:
    """A tiny simulated dataset (with truth/), written once per session."""
    events = _CACHE.get("events")
    if events is None:
        from trustfeed.training.simulate import SimConfig, simulate, write_dataset

        events = root / "events"
        write_dataset(simulate(SimConfig(**TINY_PLATFORM)), events)
        _CACHE["events"] = events
    return events


def shared_trained_model(root: Path) -> TrainedModel:
    """Train once against the shared server and register the model (cached for the session)."""
    trained = _CACHE.get("trained")
    if trained is not None:
        return trained
    from trustfeed.ranker.lambdamart import LambdaMARTConfig
    from trustfeed.training.evaluation import EvalConfig
    from trustfeed.training.train import TrainJobConfig, train

    shared_server(root / "server", wait=False)  # the server boots while the data is simulated
    events_dir = tiny_events(root)
    server = shared_server(root / "server")
    name = "trustfeed-test"
    config = TrainJobConfig(
        events=events_dir,
        experiment="trustfeed-tests",
        tracking_uri=server.uri,
        register=name,
        output_dir=root / "models",
        model=LambdaMARTConfig(**TINY_MODEL),
        evaluation=EvalConfig(sweep_strengths=(0.0, 2.0, 8.0)),
    )
    result = train(config)
    trained = TrainedModel(server, result, config, name, events_dir, root / "models")
    _CACHE["trained"] = trained
    return trained

