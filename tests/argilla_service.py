"""A real Argilla server (argilla-server 2.8) on 127.0.0.1 for the tests, with its Redis and search engine.

The server's pins clash with the project's, so it lives in its own venv (created on first use, about 35 s;
`.ci/run` creates it up front). Search engine: `noida-db`, a single binary speaking the Elasticsearch 8 API
(real Elasticsearch cannot be installed here). Redis: Debian's `redis-server`. Everything binds to loopback
and is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
SERVER_REQUIREMENTS = ["argilla-server==2.8.0", "click<8.2", "noida-db==0.2.3"]
OWNER_API_KEY = "owner.apikey.for.local.tests"  # a throwaway key for a loopback-only test server
OWNER_PASSWORD = "owner-password-1234"


def server_venv() -> Path:
    """Where the argilla-server venv lives (``CRESCENT_ARGILLA_SERVER_VENV`` overrides)."""
    return Path(os.environ.get("CRESCENT_ARGILLA_SERVER_VENV", REPO / ".cache" / "argilla-server-venv"))


def ensure_server_venv(venv: Path | None = None) -> Path:
    """Create the server venv if it is missing or stale; returns its python."""
    from filelock import FileLock

    venv = venv or server_venv()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv) + ".lock"):  # test workers may start at once: build it once
        return _ensure_server_venv(venv)


def _ensure_server_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    marker = venv / ".crescent-requirements"
    wanted = "\n".join(SERVER_REQUIREMENTS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *SERVER_REQUIREMENTS], check=True
    )
    marker.write_text(wanted)
    return python


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ArgillaServer:
    """argilla-server + worker + Redis + noida-db, started in `workdir` and stopped by PID."""

    workdir: Path
    api_url: str = ""
    api_key: str = OWNER_API_KEY
    processes: list[subprocess.Popen] = field(default_factory=list)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes.append(proc)
        return proc

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def start(self, timeout: float = 120) -> ArgillaServer:
        if shutil.which("redis-server") is None:
            raise RuntimeError("the Argilla tests need Debian's redis-server: apt-get install -y redis-server")
        python = ensure_server_venv()
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis_port, es_port, api_port = _free_port(), _free_port(), _free_port()
        self._spawn(
            "redis",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        )
        site = subprocess.run(
            [str(python), "-c", "import noida_db, os; print(os.path.dirname(noida_db.__file__))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self._spawn(
            "noida",
            [
                f"{site}/noida-db", "start", "--data-dir", str(self.workdir / "noida"), "--host", "127.0.0.1",
                "--only", "elasticsearch", "--elasticsearch-port", str(es_port),
            ],
        )  # fmt: skip
        tmp = self.workdir / "tmp"  # each server process copies its frontend into TMPDIR
        tmp.mkdir(exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "HF_"))},
            "TMPDIR": str(tmp),
            "ARGILLA_HOME_PATH": str(self.workdir / "home"),
            "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir / 'argilla.db'}?check_same_thread=False",
            "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{es_port}",
            "ARGILLA_SEARCH_ENGINE": "elasticsearch",
            "ARGILLA_ENABLE_TELEMETRY": "0",
        }
        self._wait_port(es_port, "noida", timeout)
        run = dict(env=env, check=True, capture_output=True, text=True)
        try:
            subprocess.run([str(python), "-m", "argilla_server", "database", "migrate"], **run)
            subprocess.run(
                [
                    str(python), "-m", "argilla_server", "database", "users", "create", "--username", "owner",
                    "--role", "owner", "--password", OWNER_PASSWORD, "--api-key", self.api_key,
                    "--workspace", "argilla", "--first-name", "Owner",
                ],
                **run,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            self.stop()
            raise RuntimeError(f"argilla-server setup failed: {exc.cmd}\n{exc.stdout}\n{exc.stderr}") from exc
        self._spawn(
            "server",
            [str(python), "-m", "argilla_server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
            env=env,
        )
        self._spawn("worker", [str(python), "-m", "argilla_server", "worker"], env=env)
        self.api_url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.api_url}/api/v1/version", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"argilla-server did not become ready:\n{self.log_tail('server')}")
            time.sleep(0.5)

    def _wait_port(self, port: int, name: str, timeout: float) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} did not open port {port}:\n{self.log_tail(name)}")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()


if __name__ == "__main__":  # start one by hand: python tests/argilla_service.py [--install-only]
    import tempfile

    if "--install-only" in sys.argv:
        print(ensure_server_venv())
        sys.exit(0)
    server = ArgillaServer(Path(tempfile.mkdtemp(prefix="argilla-")))
    t0 = time.monotonic()
    server.start()
    print(f"ready in {time.monotonic() - t0:.1f} s: {server.api_url} api_key={server.api_key}")
    try:
        signal.pause()
    finally:
        server.stop()
