"""The shared GGUF header reader (utils) and the trading layer's messages built on it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGUFReader

from trading_agents.errors import ModelFileError
from trading_agents.model_files import gguf_info
from utils.llm_integration.gguf_header import GGUFHeaderError, GGUFInfo, read_gguf_info
from utils.llm_integration.model_selector import kv_bytes_per_token, ram_needed_mb
from utils.llm_integration.spec import LLMSpec

REDOWNLOAD = "delete it and download it again (`trading-agents models download NAME`)"


def _metadata(path: Path) -> dict[str, int]:
    """The attention metadata as the gguf package itself reads it."""
    fields = GGUFReader(path).fields
    return {
        key.removeprefix("llama."): int(fields[key].contents())
        for key in fields
        if key.startswith("llama.") and isinstance(fields[key].contents(), int)
    }


def test_kv_bytes_per_token_follows_the_metadata(tiny_llama: Path) -> None:
    meta = _metadata(tiny_llama)
    info = read_gguf_info(tiny_llama)
    assert (info.block_count, info.head_count, info.head_count_kv, info.embedding_length) == (
        meta["block_count"],
        meta["attention.head_count"],
        meta["attention.head_count_kv"],
        meta["embedding_length"],
    )
    assert info.key_length is None and info.value_length is None  # head dim: embedding / heads
    head_dim = meta["embedding_length"] // meta["attention.head_count"]
    expected = 2 * meta["block_count"] * meta["attention.head_count_kv"] * (head_dim + head_dim)
    assert info.kv_bytes_per_token == expected == 2 * 2 * 4 * (64 + 64)
    assert kv_bytes_per_token(tiny_llama) == expected
    # the trading layer hands back the same header
    assert gguf_info.read_gguf_info(tiny_llama) == info and gguf_info.GGUFInfo is GGUFInfo


def test_kv_bytes_per_token_defaults_and_unknowns(tiny_llama: Path) -> None:
    info = read_gguf_info(tiny_llama)
    grouped = replace(info, head_count_kv=None, key_length=96, value_length=None)
    assert grouped.kv_bytes_per_token == 2 * 2 * 4 * (96 + 96)  # KV heads: all heads; V: K's length
    assert replace(info, value_length=32).kv_bytes_per_token == 2 * 2 * 4 * (64 + 32)
    assert replace(info, block_count=None).kv_bytes_per_token is None
    assert replace(info, head_count=None).kv_bytes_per_token is None  # no head dim, no KV heads


def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str, str]]:
    """kind -> (file, the trading layer's message with {path} left to fill)."""
    data = good.read_bytes()
    (tmp_path / "dir").mkdir()
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "text.gguf").write_text("hello, I am a text file\n")
    (tmp_path / "header.gguf").write_bytes(data[:2000])
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "v9.gguf").write_bytes(data[:4] + (9).to_bytes(4, "little") + data[8:])
    bad_type = b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
    bad_type += (1).to_bytes(8, "little") + b"k" + (99).to_bytes(4, "little") + b"\0" * 64
    (tmp_path / "corrupt.gguf").write_bytes(bad_type)
    half = len(data) // 2
    return {
        "missing": (
            tmp_path / "absent.gguf",
            "model file {path} does not exist; run `trading-agents models download NAME`",
        ),
        "directory": (tmp_path / "dir", "model path {path} is a directory; give the .gguf file inside it"),
        "empty": (tmp_path / "empty.gguf", "model file {path} is empty; " + REDOWNLOAD),
        "not_gguf": (
            tmp_path / "text.gguf",
            "model file {path} is not a GGUF file (starts with b'hell'); use a .gguf model file",
        ),
        "truncated": (
            tmp_path / "header.gguf",
            "model file {path} is truncated (header cut short); " + REDOWNLOAD,
        ),
        "truncated-data": (
            tmp_path / "half.gguf",
            f"model file {{path}} is truncated ({half} of {len(data)} bytes); " + REDOWNLOAD,
        ),
        "version": (
            tmp_path / "v9.gguf",
            "model file {path} uses GGUF version 9; only versions 2 and 3 are supported, "
            "use a file converted by a recent llama.cpp",
        ),
        "corrupt": (
            tmp_path / "corrupt.gguf",
            "model file {path} has a corrupt GGUF header (unknown metadata value type 99); " + REDOWNLOAD,
        ),
    }


def test_each_problem_has_its_kind_and_the_trading_message(tmp_path: Path, tiny_llama: Path) -> None:
    for case, (path, message) in _bad_files(tmp_path, tiny_llama).items():
        kind = case.removesuffix("-data")
        with pytest.raises(GGUFHeaderError) as exc:
            read_gguf_info(path)
        assert exc.value.kind == kind, case
        assert exc.value.path == path and str(path) in str(exc.value) and "\n" not in str(exc.value)
        assert isinstance(exc.value, ValueError)
        assert (exc.value.info is not None) == (case == "truncated-data"), case
        with pytest.raises(ModelFileError) as trading:
            gguf_info.read_gguf_info(path)
        assert trading.value.message == message.format(path=path), case


def test_unreadable_files(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(GGUFHeaderError) as exc:
        read_gguf_info(tiny_llama)
    assert exc.value.kind == "unreadable" and isinstance(exc.value.__cause__, PermissionError)
    with pytest.raises(ModelFileError) as trading:
        gguf_info.read_gguf_info(tiny_llama)
    assert trading.value.message == f"model file {tiny_llama} is not readable; fix its permissions"

    def broken(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "open", broken)
    with pytest.raises(ModelFileError) as trading:
        gguf_info.read_gguf_info(tiny_llama)
    assert trading.value.message == f"model file {tiny_llama} cannot be read (Input/output error)"


def test_the_selector_estimate_survives_bad_files(tmp_path: Path, tiny_llama: Path) -> None:
    files = _bad_files(tmp_path, tiny_llama)
    # the header is intact when only the tensor data is cut short: the estimate still holds
    assert kv_bytes_per_token(files["truncated-data"][0]) == read_gguf_info(tiny_llama).kv_bytes_per_token
    for case in ("missing", "directory", "empty", "not_gguf", "truncated", "version", "corrupt"):
        assert kv_bytes_per_token(files[case][0]) is None, case


def test_ram_needed_counts_the_file_without_a_kv_estimate(tmp_path: Path, tiny_llama: Path) -> None:
    header = _bad_files(tmp_path, tiny_llama)["truncated"][0]
    assert ram_needed_mb(LLMSpec(path=header, n_ctx=1024)) == round(2000 / 2**20, 1)
    assert ram_needed_mb(LLMSpec(path=tiny_llama, n_ctx=1024)) == round(
        (tiny_llama.stat().st_size + 1024 * 2048) / 2**20, 1
    )
