"""Downloads against a local stand-in for the Hugging Face Hub on 127.0.0.1.

The server answers the calls the installed huggingface_hub makes: ``HEAD`` on
``/{repo_id}/resolve/{revision}/{filename}`` (``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length``) and ``GET`` of the same URL with ``Range`` support.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from trading_agents.cli.app import main
from trading_agents.config.settings import load_settings
from trading_agents.errors import DataUnavailableError, UserInputError
from trading_agents.model_files.download import download_model, partial_path
from trading_agents.model_files.registry import Registry

REPO = "acme/tiny-GGUF"
FILENAME = "tiny.Q4_K_M.gguf"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every offset distinguishable
TOKEN = "hf_secretTOKEN_do_not_print_123"
COMMIT = "a" * 40
CHUNK = 64 * 1024


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub writes in 10 MB chunks; bytes of an unfinished chunk are lost on a cut,
    so a 1 MiB test file needs smaller chunks to leave something to resume from."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)


@dataclass
class HubState:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    cut_first_get_at: int | None = None  # send only this many body bytes on the first GET
    fail_gets_after_cut: bool = False  # then answer 500 to further GETs (the run ends early)
    cut_done: bool = False
    gets: list[str | None] = field(default_factory=list)  # Range header of each GET
    auth: list[str | None] = field(default_factory=list)


class _Hub(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _lookup(self) -> bytes | None:
        parts = self.path.split("?")[0].lstrip("/").split("/")
        # owner/name/resolve/revision/filename
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "RepoNotFound")
            return None
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        if not any(r == repo for r, _ in self.state.files):
            self._error(404, "RepoNotFound")
            return None
        data = self.state.files.get((repo, filename))
        if data is None:
            self._error(404, "EntryNotFound")
        return data

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _meta_headers(self, data: bytes) -> None:
        etag = hashlib.sha256(data).hexdigest()
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")

    def do_HEAD(self) -> None:
        self.state.auth.append(self.headers.get("Authorization"))
        data = self._lookup()
        if data is None:
            return
        self.send_response(200)
        self._meta_headers(data)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()

    def do_GET(self) -> None:
        self.state.auth.append(self.headers.get("Authorization"))
        data = self._lookup()
        if data is None:
            return
        rng = self.headers.get("Range")
        self.state.gets.append(rng)
        cut = self.state.cut_first_get_at is not None and not self.state.cut_done
        self.state.cut_done = self.state.cut_done or cut
        if not cut and self.state.cut_done and self.state.fail_gets_after_cut:
            self._error(500, "Internal")
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        self._meta_headers(data)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut:
            self.wfile.write(body[: self.state.cut_first_get_at])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def hub() -> Iterator[tuple[str, HubState]]:
    state = HubState(files={(REPO, FILENAME): PAYLOAD})
    handler = type("Hub", (_Hub,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def _setup(tmp_path: Path, endpoint: str, repo: str = REPO, filename: str = FILENAME) -> Path:
    """A registry with one downloadable entry and a config pointing at it; returns the config."""
    registry = tmp_path / "models.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "tiny": {
                        "aliases": ["t"],
                        "repo_id": repo,
                        "filename": filename,
                        "size_bytes": len(PAYLOAD),
                        "architecture": "llama",
                        "quantization": "Q4_K_M",
                        "context_length": 512,
                        "kv_bytes_per_token": 1024,
                        "chat_format": "gguf",
                    }
                }
            }
        )
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "paths": {"registry": str(registry), "models_dir": str(tmp_path / "models")},
                "huggingface": {"endpoint": endpoint, "token": TOKEN},
                "llm": {"primary": "tiny", "fallback": None},
            }
        )
    )
    return config


def _entry_and_settings(config: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(config)
    return Registry.load(settings.paths.registry).get("tiny"), settings


def test_full_download_has_the_right_bytes_and_sends_the_token(tmp_path: Path, hub) -> None:  # type: ignore[no-untyped-def]
    endpoint, state = hub
    entry, settings = _entry_and_settings(_setup(tmp_path, endpoint))
    path = download_model(entry, settings, progress=False)
    assert path == tmp_path / "models" / FILENAME
    assert path.read_bytes() == PAYLOAD
    assert state.gets == [None]
    assert f"Bearer {TOKEN}" in state.auth
    assert not list((tmp_path / "models" / ".downloads").glob("*.part"))
    # Present with the right size: no second request to the hub.
    n = len(state.auth)
    assert download_model(entry, settings, progress=False) == path
    assert len(state.auth) == n


def test_connection_cut_mid_body_is_resumed_with_a_range_request(tmp_path: Path, hub) -> None:  # type: ignore[no-untyped-def]
    endpoint, state = hub
    state.cut_first_get_at = 5 * CHUNK + 1000  # the 1000 are lost
    entry, settings = _entry_and_settings(_setup(tmp_path, endpoint))
    path = download_model(entry, settings, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert state.gets[0] is None
    assert state.gets[1] == f"bytes={5 * CHUNK}-"


def test_interrupted_run_keeps_the_partial_file_and_the_next_run_resumes(tmp_path: Path, hub) -> None:  # type: ignore[no-untyped-def]
    endpoint, state = hub
    state.cut_first_get_at = 6 * CHUNK
    state.fail_gets_after_cut = True
    entry, settings = _entry_and_settings(_setup(tmp_path, endpoint))
    with pytest.raises(DataUnavailableError, match="run the command again to resume"):
        download_model(entry, settings, progress=False)
    dest = tmp_path / "models" / FILENAME
    assert not dest.exists()
    part = partial_path(entry, settings, hashlib.sha256(PAYLOAD).hexdigest())
    assert part.stat().st_size == 6 * CHUNK

    state.fail_gets_after_cut = False
    state.gets.clear()
    assert download_model(entry, settings, progress=False) == dest
    assert state.gets == [f"bytes={6 * CHUNK}-"]
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_unknown_repo_or_file_is_one_line_and_exit_2_without_the_token(
    tmp_path: Path,
    hub,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    endpoint, _ = hub
    for repo, filename, words in [
        ("acme/nope", FILENAME, "repository acme/nope not found"),
        (REPO, "missing.gguf", "file acme/tiny-GGUF/missing.gguf not found"),
    ]:
        config = _setup(tmp_path, endpoint, repo=repo, filename=filename)
        with pytest.raises(SystemExit) as exc:
            main(["models", "download", "tiny", "--config", str(config)])
        assert exc.value.code == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("error: ") and words in err
        assert len(err.strip().splitlines()) == 1
        assert TOKEN not in out + err


def test_cli_download_prints_the_path_and_never_the_token(
    tmp_path: Path,
    hub,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    endpoint, _ = hub
    config = _setup(tmp_path, endpoint)
    with pytest.raises(SystemExit) as exc:
        main(["models", "download", "t", "--config", str(config), "--json"])
    assert exc.value.code == 0
    out, err = capsys.readouterr()
    assert f'"path": "{tmp_path / "models" / FILENAME}"' in out
    assert TOKEN not in out + err


def test_unreachable_hub_is_data_unavailable(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entry, settings = _entry_and_settings(_setup(tmp_path, f"http://127.0.0.1:{port}"))
    with pytest.raises(DataUnavailableError, match=f"cannot reach the hub at http://127.0.0.1:{port}"):
        download_model(entry, settings, progress=False)


def test_embedded_entry_needs_no_download(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["models", "download", "smollm2"])
    assert exc.value.code == 0
    assert "nothing to download" in capsys.readouterr().out


def test_a_path_is_not_a_download_name() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["models", "download", "foo/bar.gguf"])
    assert exc.value.code == UserInputError.exit_code
