"""Shared fixtures for the Python tests of `dwarfstar serve`: find the binary and the
SmolLM2 model, start a server on a free loopback port, stop it afterwards.

The binary comes from $DWARFSTAR_BIN or target/release/dwarfstar (deploy/test.sh builds
it with `cargo test --release` first); the model from $DWARFSTAR_MODELS_DIR or models/
(deploy/fetch-models.sh fills it). A missing one fails the tests with the fix.
"""

import json
import os
import pathlib
import subprocess
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
