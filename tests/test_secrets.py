"""A planted Hugging Face token never shows up in any artefact of a run: stdout (``--json``),
stderr, log files, results folders, the ledger, caches, or exception messages.

Every file under the state folder and the results folder is read as bytes and searched, so a
new artefact is covered without this test knowing about it. The ledger-level check is in
tests/test_broker_ledger.py; the download path's own check is in tests/test_models_download.py.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trading_agents.cli.app import main

SECRET = "hf_plantedSECRET_4f9c2a71e0b3d8"
NEEDLES = (SECRET.encode(), base64.b64encode(SECRET.encode()), SECRET[3:].encode())


@pytest.fixture(autouse=True)
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_AGENTS_HUGGINGFACE__TOKEN", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def assert_clean_text(*texts: str) -> None:
    for text in texts:
        for needle in NEEDLES:
            assert needle.decode() not in text


def assert_clean_tree(*roots: Path) -> int:
    """Search every file under ``roots`` (bytes, including SQLite pages and WAL); return the count."""
    seen = 0
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            data = path.read_bytes()
            seen += 1
            for needle in NEEDLES:
                assert needle not in data, f"the planted token is in {path}"
    return seen


def test_backtest_with_log_file_and_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path
) -> None:
    out, log = tmp_path / "results", tmp_path / "logs" / "backtest.log"
    code, stdout, err = cli(
        capsys, "backtest", "-s", "sma-cross", "--out", str(out), "--log-file", str(log), "--json"
    )
    assert code == 0, err
    assert '"huggingface"' in stdout and "**********" in stdout  # the config is recorded, masked
    assert_clean_text(stdout, err)
    assert assert_clean_tree(out, log, isolated_state) >= 7


def test_paper_session_on_the_embedded_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path
) -> None:
    """A real session (one bar, real llama.cpp): summary, ledger with prompts and replies, caches."""
    config = tmp_path / "config.yaml"
    # a small max_tokens keeps it quick: replies cut short fail closed, prompts are still recorded
    config.write_text("llm:\n  primary: smollm2-135m-instruct\n  fallback: null\n  max_tokens: 24\n")
    code, stdout, err = cli(capsys, "run", "--date", "2013-02-28", "--json", "--config", str(config))
    assert code == 0, err
    assert_clean_text(stdout, err)
    for argv in (
        ["ledger", "--json"],
        ["halt", "test"],
        ["resume"],
        ["models", "list", "--json"],
    ):
        code, stdout, err = cli(capsys, *argv, "--config", str(config))
        assert code == 0, err
        assert_clean_text(stdout, err)
    assert assert_clean_tree(isolated_state) >= 2  # ledger.sqlite, its WAL, lock, hash cache...


class _EchoingHub(BaseHTTPRequestHandler):
    """A hostile or broken hub: every answer is an error whose body and headers echo the request."""

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        echoed = str(self.headers.get("Authorization", ""))
        body = f"denied for {echoed}".encode()
        self.send_response(401)
        self.send_header("X-Error-Message", f"bad credentials {echoed}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer


@pytest.fixture
def echoing_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_errors_never_echo_the_token(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    isolated_state: Path,
    echoing_hub: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"paths:\n  models_dir: {tmp_path / 'models'}\nhuggingface:\n  endpoint: {echoing_hub}\n"
    )
    for json_flag in ([], ["--json"]):
        code, stdout, err = cli(
            capsys, "models", "download", "tinyllama", "--config", str(config), *json_flag
        )
        assert code != 0 and err.startswith("error: ") and "Traceback" not in err
        assert_clean_text(stdout, err)
    assert_clean_tree(tmp_path / "models", isolated_state) if (tmp_path / "models").exists() else None


def test_config_errors_never_echo_the_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRADING_AGENTS_HUGGINGFACE__TOKEN")  # else it overrides the file's value
    config = tmp_path / "config.yaml"
    config.write_text(f"huggingface:\n  token: [{SECRET}]\n")  # wrong type: the value must not be shown
    code, _, err = cli(capsys, "ledger", "--config", str(config))
    assert code == 2 and "huggingface.token" in err
    assert_clean_text(err)
    config.write_text(f"huggingface:\n  tokn: {SECRET}\n")
    code, _, err = cli(capsys, "ledger", "--config", str(config))
    assert code == 2 and "huggingface.tokn: unknown key" in err
    assert_clean_text(err)
