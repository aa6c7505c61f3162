"""GGUF inspection and verification against real (tiny) llama.cpp-quantized files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.gguf_factory import make_tiny_mixtral
from trading_agents.config.settings import Settings, load_settings, project_root
from trading_agents.errors import ModelFileError
from trading_agents.model_files.gguf_info import read_gguf_info
from trading_agents.model_files.registry import Registry
from trading_agents.model_files.verify import verify_model
from utils.llm_integration.loaded_model import load_llama

MIXTRAL_FILE = Registry.load(project_root() / "configs" / "models.yaml").get("mixtral").filename


@pytest.fixture(scope="session")
def tiny_mixtral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_mixtral(tmp_path_factory.mktemp("gguf") / "tiny-mixtral.Q4_K_M.gguf")


def _settings(models_dir: Path) -> Settings:
    return load_settings(None, {"paths.models_dir": str(models_dir)})


def test_header_of_the_tiny_mixtral(tiny_mixtral: Path) -> None:
    info = read_gguf_info(tiny_mixtral)
    assert (info.architecture, info.expert_count, info.expert_used_count) == ("llama", 8, 2)
    assert (info.file_type, info.quantization) == (15, "Q4_K_M")
    assert (info.context_length, info.block_count, info.embedding_length, info.head_count_kv) == (
        512,
        2,
        256,
        4,
    )
    assert info.version == 3 and info.tensor_count == 23
    assert info.data_end == info.size_bytes
    assert info.chat_template and "[INST]" in info.chat_template


def test_llama_cpp_loads_the_quantized_tiny_mixtral_and_generates(tiny_mixtral: Path) -> None:
    llm = load_llama(tiny_mixtral, 128, n_threads=1, seed=0)
    out = llm.create_completion("The market", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1


def test_verify_reports_a_mixtral_shaped_q4_k_m_file(tmp_path: Path, tiny_mixtral: Path) -> None:
    shutil.copy(tiny_mixtral, tmp_path / MIXTRAL_FILE)
    report = verify_model("mixtral", _settings(tmp_path), smoke=False)
    checks = {c.name: c for c in report.checks}
    assert report.entry == "mixtral-8x7b-instruct"
    assert checks["architecture"].ok and checks["architecture"].detail == "llama"
    assert checks["experts"].ok and checks["experts"].detail == "8 experts, 2 used"
    assert checks["quantization"].ok and checks["quantization"].detail.startswith("Q4_K_M")
    assert checks["llama-cpp-python"].ok
    # A 2.5 MB file is not the 26 GB Mixtral: the size check fails the report.
    assert not checks["size"].ok and "download it again" in checks["size"].detail
    assert not report.ok and [c.name for c in report.failures] == ["size"]


def test_verify_smoke_generates_tokens_in_a_child_process(tiny_mixtral: Path) -> None:
    report = verify_model(tiny_mixtral, _settings(tiny_mixtral.parent), smoke=True)
    assert report.ok, report.failures
    assert report.smoke is not None and report.smoke["tokens"] >= 1
    assert report.smoke["tokens_per_s"] > 0


def test_wrong_shape_for_the_mixtral_entry(tmp_path: Path, tiny_llama: Path) -> None:
    shutil.copy(tiny_llama, tmp_path / MIXTRAL_FILE)
    report = verify_model("mixtral", _settings(tmp_path), smoke=False)
    failed = {c.name: c.detail for c in report.failures}
    assert failed["experts"] == "None experts, None used; mixtral-8x7b-instruct has 8 experts, 2 used"
    assert failed["quantization"] == "Q8_0 (file type 7), but mixtral-8x7b-instruct is Q4_K_M"


def test_wrong_architecture(tmp_path: Path) -> None:
    make_tiny_mixtral(tmp_path / MIXTRAL_FILE, "F16", architecture="qwen2")
    report = verify_model("mixtral", _settings(tmp_path), smoke=False)
    failed = {c.name: c.detail for c in report.failures}
    assert failed["architecture"] == "qwen2, but mixtral-8x7b-instruct is llama"
    assert "quantization" in failed


def _expect_model_file_error(path: Path, words: str) -> None:
    with pytest.raises(ModelFileError, match=words) as exc:
        read_gguf_info(path)
    assert str(path) in exc.value.message and "\n" not in exc.value.message


def test_bad_files_are_one_line_model_file_errors(tmp_path: Path, tiny_mixtral: Path) -> None:
    _expect_model_file_error(tmp_path / "absent.gguf", "does not exist")
    _expect_model_file_error(tmp_path, "is a directory")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _expect_model_file_error(tmp_path / "empty.gguf", "is empty")
    (tmp_path / "text.gguf").write_text("hello, I am a text file\n")
    _expect_model_file_error(tmp_path / "text.gguf", "is not a GGUF file")
    (tmp_path / "random.gguf").write_bytes(bytes(range(7, 250)) * 9)
    _expect_model_file_error(tmp_path / "random.gguf", "is not a GGUF file")
    data = tiny_mixtral.read_bytes()
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])
    _expect_model_file_error(tmp_path / "half.gguf", r"is truncated \(\d+ of \d+ bytes\)")
    (tmp_path / "header.gguf").write_bytes(data[:2000])
    _expect_model_file_error(tmp_path / "header.gguf", r"is truncated \(header cut short\)")
    (tmp_path / "v9.gguf").write_bytes(data[:4] + (9).to_bytes(4, "little") + data[8:])
    _expect_model_file_error(tmp_path / "v9.gguf", "uses GGUF version 9")


def test_verify_turns_file_problems_into_failed_checks(tmp_path: Path) -> None:
    (tmp_path / MIXTRAL_FILE).write_bytes(b"")
    report = verify_model("mixtral", _settings(tmp_path), smoke=False)
    assert not report.ok
    assert report.failures[0].name == "gguf" and "is empty" in report.failures[0].detail


def test_verify_checks_a_pinned_sha256(tmp_path: Path, tiny_mixtral: Path) -> None:
    import hashlib

    import yaml

    registry = yaml.safe_load((project_root() / "configs" / "models.yaml").read_text())
    entry = registry["models"]["mixtral-8x7b-instruct"]
    entry["sha256"] = hashlib.sha256(tiny_mixtral.read_bytes()).hexdigest()
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    shutil.copy(tiny_mixtral, tmp_path / MIXTRAL_FILE)
    settings = load_settings(
        None, {"paths.models_dir": str(tmp_path), "paths.registry": str(tmp_path / "models.yaml")}
    )
    checks = {c.name: c for c in verify_model("mixtral", settings).checks}
    assert checks["sha256"].ok and checks["sha256"].detail == entry["sha256"]
    with (tmp_path / MIXTRAL_FILE).open("ab") as fh:
        fh.write(b"\0")
    checks = {c.name: c for c in verify_model("mixtral", settings).checks}
    assert not checks["sha256"].ok and "download it again" in checks["sha256"].detail
