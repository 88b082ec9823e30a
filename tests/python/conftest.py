"""Shared fixtures for the Python tests of `dwarfstar serve`: find the binary and the
SmolLM2 model, start a server on a free loopback port, stop it afterwards.

`served` runs a module's tests against one daemon and then against a 2-stage loopback mesh
(`Mesh`: a worker and a coordinator admitted by a join secret).

The binary comes from $DWARFSTAR_BIN or target/release/dwarfstar (deploy/test.sh builds
it with `cargo test --release` first); the model from $DWARFSTAR_MODELS_DIR or models/
(deploy/fetch-models.sh fills it). A missing one fails the tests with the fix.
"""

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL_FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"


def binary() -> pathlib.Path:
    p = pathlib.Path(os.environ.get("DWARFSTAR_BIN", REPO / "target" / "release" / "dwarfstar"))
    if not p.exists():
        pytest.fail(f"{p} is missing: build it with `cargo build --release -p dwarfstar` (or set DWARFSTAR_BIN)")
    return p


def model() -> pathlib.Path:
    p = pathlib.Path(os.environ.get("DWARFSTAR_MODELS_DIR", REPO / "models")) / MODEL_FILE
    if not p.exists():
        pytest.fail(f"{p} is missing: run deploy/fetch-models.sh (or set DWARFSTAR_MODELS_DIR)")
    return p


class Server:
    """A `dwarfstar serve` child process on 127.0.0.1, port chosen by the OS."""

    def __init__(self, *args: str):
        env = {k: v for k, v in os.environ.items() if k != "DWARFSTAR_API_KEYS"}
        env["DWARFSTAR_LOG"] = "warn"
        cmd = [str(binary()), "serve", "--model", str(model()), "--http-addr", "127.0.0.1:0",
               "--threads", "2", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            pytest.fail(f"dwarfstar serve did not start: {line}{self.proc.stderr.read()}")
        self.base = line[line.index("http://"):].split()[0]

    def stop(self):
        self.proc.kill()
        self.proc.wait()

    def request(self, method: str, path: str, body=None, key=None):
        """(status, parsed JSON body) without raising on HTTP errors."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def run_greedy(*args: str, n: int) -> dict:
    """What `dwarfstar run --temp 0 --json` generates."""
    out = subprocess.run(
        [str(binary()), "run", "--model", str(model()), "--temp", "0", "--json", "--threads", "2", "-n", str(n), *args],
        check=True, capture_output=True, text=True, env={**os.environ, "DWARFSTAR_LOG": "error"},
    )
    return json.loads(out.stdout)


class Mesh:
    """A 2-stage loopback mesh: a worker daemon and a coordinator that splits the model into two
    pipeline stages across both and serves the API. Admitted by a join secret in a temp dir."""

    def __init__(self, *args: str):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="dwarfstar-pymesh-"))
        secret = self.dir / "secret"
        secret.write_text(os.urandom(32).hex())
        env = {k: v for k, v in os.environ.items() if k not in ("DWARFSTAR_API_KEYS", "DWARFSTAR_SECRET")}
        env["DWARFSTAR_LOG"] = "warn"
        common = ["serve", "--threads", "1", "--no-mdns", "--grpc-listen", "127.0.0.1:0",
                  "--mesh-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0",
                  "--secret-file", str(secret), "--models-dir", str(model().parent)]
        self.procs = []
        worker = self._start("worker", [*common, "--state-dir", str(self.dir / "w")], env)
        line = self._wait(worker, "dwarfstar mesh: node")
        port = next(w for w in line.split() if w.startswith("/ip4/127.0.0.1/tcp/")).split("/")[-1].rstrip(",")
        self._wait(worker, "mesh worker ready")
        coord = self._start("coordinator", [
            *common, "--state-dir", str(self.dir / "c"), "--peer", f"127.0.0.1:{port}",
            "--mesh-nodes", "2", "--stages", "2", "--model", str(model()), "--http-addr", "127.0.0.1:0", *args,
        ], env)
        self.plan = self._wait(coord, "dwarfstar mesh: plan")
        line = self._wait(coord, "listening on http://")
        self.base = line[line.index("http://"):].split()[0].rstrip(";")
        for p in self.procs:
            threading.Thread(target=p.stdout.read, daemon=True).start()

    def _start(self, tag, args, env):
        log = open(self.dir / f"{tag}.log", "w")
        p = subprocess.Popen([str(binary()), *args], stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        self.procs.append(p)
        return p

    def _wait(self, proc, needle: str) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if needle in line:
                return line
            if not line and proc.poll() is not None:
                break
        logs = "".join(f.read_text() for f in self.dir.glob("*.log"))
        self.stop()
        pytest.fail(f"the mesh did not start ({needle!r} never came): {logs}")

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["node", "mesh"])
def served(request):
    """The server the compatibility tests run against: one daemon, then a 2-stage mesh."""
    srv = Server() if request.param == "node" else Mesh()
    yield srv
    srv.stop()
