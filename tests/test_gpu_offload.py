"""GPU offload settings on the CPU build: validation, pass-through, placement, verify, scripts.

The llama.cpp here is the CPU build, so offload requests must degrade to a stated warning and
leave n_gpu_layers 0 exactly as before. Placement and the VRAM check are pure arithmetic over
real GGUF headers; there a GPU is described by a :class:`GPUDevice`, the one fake in this file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.gguf_factory import make_tiny_mixtral
from trading_agents.agents.clients import local_client_config
from trading_agents.cli.app import main
from trading_agents.config.settings import load_settings, project_root
from trading_agents.errors import ConfigError
from trading_agents.model_files.registry import Registry, resolve_model
from trading_agents.model_files.verify import verify_model
from utils.llm_integration import gpu
from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
from utils.llm_integration.gguf_header import read_gguf_info
from utils.llm_integration.loaded_model import LocalLLM
from utils.llm_integration.model_selector import ram_needed_mb
from utils.llm_integration.spec import LLMSpec, SamplingParams

ROOT = project_root()
MIXTRAL_FILE = Registry.load(ROOT / "configs" / "models.yaml").get("mixtral").filename
H200 = gpu.GPUDevice(0, "CUDA0", "NVIDIA H200", 150_000_000_000, 149_000_000_000)


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_mixtral(tmp_path_factory.mktemp("gguf") / "tiny-mixtral.Q4_K_M.gguf")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


# --------------------------------------------------------------------------- settings


def test_offload_settings_default_to_the_cpu() -> None:
    llm = load_settings().llm
    assert (llm.n_gpu_layers, llm.main_gpu, llm.tensor_split) == (0, None, None)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"llm.n_gpu_layers": -2}, "llm.n_gpu_layers"),
        ({"llm.main_gpu": -1}, "llm.main_gpu"),
        ({"llm.tensor_split": [1.0, -1.0]}, "llm.tensor_split"),
        ({"llm.tensor_split": [0.0, 0.0]}, "at least one share"),
        ({"llm.main_gpu": 0, "llm.tensor_split": [1.0, 1.0]}, "not both"),
    ],
)
def test_offload_settings_are_validated(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, overrides)


def test_offload_settings_from_yaml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text("llm:\n  n_gpu_layers: 20\n  tensor_split: [3, 1]\n")
    llm = load_settings(cfg).llm
    assert (llm.n_gpu_layers, llm.tensor_split) == (20, [3.0, 1.0])
    monkeypatch.setenv("TRADING_AGENTS_LLM__N_GPU_LAYERS", "-1")
    assert load_settings(cfg).llm.n_gpu_layers == -1


def test_settings_reach_the_model_spec(embedded_model: Path) -> None:
    settings = load_settings(None, {"llm.n_gpu_layers": 7, "llm.main_gpu": 1})
    model = resolve_model("embedded", settings)
    client = LocalLlamaChatCompletionClient.load_component(local_client_config(model, settings))
    assert (client.spec.n_gpu_layers, client.spec.main_gpu, client.spec.tensor_split) == (7, 1, None)
    split = load_settings(None, {"llm.n_gpu_layers": -1, "llm.tensor_split": [1, 2]})
    cfg = local_client_config(resolve_model("embedded", split), split)
    assert LocalLlamaChatCompletionClient.load_component(cfg).spec.tensor_split == (1.0, 2.0)


# --------------------------------------------------------------------------- llama.cpp pass-through


def test_n_gpu_layers_zero_passes_nothing_new_to_llama_cpp() -> None:
    assert gpu.offload_kwargs(0) == {}
    assert gpu.offload_kwargs(0, main_gpu=1) == {}
    assert gpu.offload_kwargs(-1) == {"n_gpu_layers": -1}
    assert gpu.offload_kwargs(5, main_gpu=1)["main_gpu"] == 1
    assert gpu.offload_kwargs(5, tensor_split=(1, 3))["tensor_split"] == [1.0, 3.0]


def test_cpu_build_reports_no_offload_and_no_llama_cpp_gpus() -> None:
    info = gpu.backend_info()
    assert info["backend"] == "CPU" and info["gpu_offload"] is False and "CPU" in info["registries"]
    assert all(not g.usable for g in gpu.gpu_devices())  # nvidia-smi's, if any: unusable here


def test_offload_on_the_cpu_build_is_a_stated_warning_and_the_same_replies(
    tiny_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [{"role": "user", "content": "Buy or sell?"}]
    sampling = SamplingParams(max_tokens=12)
    plain = LocalLLM(LLMSpec(path=tiny_llama, n_ctx=256, n_threads=1, ram_cache_mb=0))
    with caplog.at_level(logging.WARNING, logger="utils.llm_integration.gpu"):
        asked = LocalLLM(LLMSpec(path=tiny_llama, n_ctx=256, n_threads=1, ram_cache_mb=0, n_gpu_layers=-1))
        offloaded_text = asked.complete(messages, sampling=sampling).text
    try:
        assert plain.complete(messages, sampling=sampling).text == offloaded_text
        assert caplog.records, "an offload the build cannot honour must not be silent"
        warning = caplog.records[0].getMessage()
        assert "llm.n_gpu_layers is -1" in warning and "make install GPU=cuda" in warning
    finally:
        plain.close()
        asked.close()


def test_a_gpu_that_is_not_there_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "backend_info", lambda: {"backend": "CUDA", "gpu_offload": True})
    monkeypatch.setattr(gpu, "gpu_devices", lambda: [H200])
    assert gpu.check_offload(-1) == []
    with pytest.raises(gpu.OffloadError, match=r"llm.main_gpu is 2 but llama.cpp sees 1 GPU \(0..0\)"):
        gpu.check_offload(-1, main_gpu=2)
    with pytest.raises(gpu.OffloadError, match="tensor_split has 2 shares"):
        gpu.check_offload(-1, tensor_split=[1, 1])
    monkeypatch.setattr(gpu, "gpu_devices", list)
    assert "sees no GPU" in gpu.check_offload(-1)[0]


# --------------------------------------------------------------------------- placement


def test_placement_follows_llama_cpp(tiny_mixtral: Path) -> None:
    info = read_gguf_info(tiny_mixtral)
    total = sum(n for _, n in info.tensors)
    kv = info.kv_bytes_per_token * 512
    none = gpu.offload_plan(info, -1, 512)  # no GPU: everything stays
    assert (none.offloaded_layers, none.gpu_bytes, none.cpu_weight_bytes) == (0, 0, total)
    everything = gpu.offload_plan(info, -1, 512, gpus=[H200])
    assert (everything.offloaded_layers, everything.total_layers) == (3, 3)
    assert everything.gpu_kv_bytes == kv and everything.cpu_kv_bytes == 0
    embd = dict(info.tensors)["token_embd.weight"]
    assert everything.cpu_weight_bytes == embd  # the input embeddings never move
    assert everything.per_gpu_bytes == (everything.gpu_bytes,)
    last = gpu.offload_plan(info, 1, 512, gpus=[H200])  # the last block, not the output layer
    block1 = sum(n for name, n in info.tensors if name.startswith("blk.1."))
    assert last.gpu_weight_bytes == block1 and last.gpu_kv_bytes == kv // 2
    assert last.cpu_weight_bytes + last.gpu_weight_bytes == total
    two = gpu.offload_plan(info, 2, 512, gpus=[H200])
    assert two.offloaded_layers == 2
    assert two.gpu_weight_bytes < everything.gpu_weight_bytes  # output stays until n_gpu_layers > blocks


def test_active_bytes_of_a_mixture_count_the_used_experts(tiny_mixtral: Path) -> None:
    info = read_gguf_info(tiny_mixtral)
    experts = sum(n for name, n in info.tensors if "_exps." in name)
    dense = sum(n for name, n in info.tensors if "_exps." not in name and name != "token_embd.weight")
    assert gpu.active_weight_bytes_per_token(info) == int(dense + experts * 2 / 8)


def test_selector_ram_fit_counts_only_the_cpu_side(
    tiny_mixtral: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = LLMSpec(path=tiny_mixtral, n_ctx=512)
    asked = LLMSpec(path=tiny_mixtral, n_ctx=512, n_gpu_layers=-1)
    assert ram_needed_mb(asked) == ram_needed_mb(cpu)  # the CPU build offloads nothing
    monkeypatch.setattr(gpu, "gpu_devices", lambda: [H200])
    embd = dict(read_gguf_info(tiny_mixtral).tensors)["token_embd.weight"]
    assert ram_needed_mb(asked) == round(embd / 2**20, 1) < ram_needed_mb(cpu)


# --------------------------------------------------------------------------- models verify


def test_verify_json_has_backend_gpus_and_offload(
    tmp_path: Path, tiny_mixtral: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(tiny_mixtral, tmp_path / MIXTRAL_FILE)
    monkeypatch.setenv("TRADING_AGENTS_PATHS__MODELS_DIR", str(tmp_path))
    code, out, _ = _run(["models", "verify", str(tmp_path / MIXTRAL_FILE), "--json"], capsys)
    data = json.loads(out)
    assert data["backend"] == "CPU" and data["offloaded_layers"] == 0
    assert all(not g["usable"] for g in data["gpus"])
    assert data["offload"]["total_layers"] == 3 and data["offload"]["gpu_bytes"] == 0
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["gpu offload"]["ok"] and "0 of 3 layers" in checks["gpu offload"]["detail"]
    monkeypatch.setenv("TRADING_AGENTS_LLM__N_GPU_LAYERS", "-1")
    code, out, _ = _run(["models", "verify", str(tmp_path / MIXTRAL_FILE), "--json"], capsys)
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    check = checks["gpu offload"]
    assert (check["ok"], check["level"]) == (False, "warning")  # a warning, not a failure
    failed = [c["name"] for c in checks.values() if not c["ok"] and c["level"] == "error"]
    assert code == 2 and failed == ["size"]  # a 2.5 MB file is not the 26 GB Mixtral
    assert "make install GPU=cuda" in check["detail"]


def test_verify_vram_check_names_the_fallback(
    tmp_path: Path, tiny_mixtral: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trading_agents.model_files.verify as verify

    shutil.copy(tiny_mixtral, tmp_path / MIXTRAL_FILE)
    settings = load_settings(None, {"paths.models_dir": str(tmp_path), "llm.n_gpu_layers": -1})
    small = gpu.GPUDevice(0, "CUDA0", "a small card", 600 << 20, 500 << 20)
    monkeypatch.setattr(verify, "backend_info", lambda: {"backend": "CUDA", "gpu_offload": True})
    monkeypatch.setattr(verify, "check_offload", lambda *a: [])
    monkeypatch.setattr(verify, "gpu_devices", lambda: [small])
    report = verify_model("mixtral", settings)
    checks = {c.name: c for c in report.checks}
    assert report.offload is not None and report.offload.offloaded_layers == 3
    assert (checks["vram"].ok, checks["vram"].level) == (False, "warning")
    assert "fallback tinyllama-1.1b-chat will have to serve" in checks["vram"].detail
    assert "on the CPU (0 of 3 layers)" in checks["memory"].detail
    monkeypatch.setattr(verify, "gpu_devices", lambda: [H200])
    assert {c.name: c for c in verify_model("mixtral", settings).checks}["vram"].ok


# --------------------------------------------------------------------------- the three scripts


def _script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True, check=False
    )


def test_mixtral_scripts_wrap_verify_and_use(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    data["paths"] = {"models_dir": str(tmp_path / "models")}
    data["llm"]["primary"] = "tinyllama-1.1b-chat"
    (tmp_path / "models").mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    run = _script("verify_mixtral.py", "--config", str(cfg))
    assert run.returncode == 2 and run.stderr.startswith("error: mixtral-8x7b-instruct failed verification")
    assert "models download mixtral" in run.stderr
    run = _script("mixtral_update_script.py", "--config", str(cfg), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["new"] == "mixtral-8x7b-instruct"
    assert yaml.safe_load(cfg.read_text())["llm"]["primary"] == "mixtral-8x7b-instruct"


def test_mixtral_integration_script_runs_one_decision_on_the_embedded_model(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"paths:\n  models_dir: {tmp_path}\nllm:\n  n_threads: 1\n  max_tokens: 256\n")
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "test_mixtral_integration.py"), "--json"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TRADING_AGENTS_CONFIG": str(cfg)},
    )
    assert run.returncode == 0, run.stderr
    assert "using the embedded smollm2-135m-instruct" in run.stderr
    result = json.loads(run.stdout)
    assert (result["mixtral"], result["backend"], result["offloaded_layers"]) == (False, "CPU", 0)
    assert result["llm_calls"] >= 1 and result["completion_tokens"] > 0 and result["tokens_per_s"] > 0
    assert _script("test_mixtral_integration.py", "--bogus").returncode == 2


def test_a_gpu_build_that_sees_no_gpu_says_so_rather_than_asking_for_a_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Measured on the H200 machine with CUDA_VISIBLE_DEVICES= : the build is CUDA, no device
    is usable, and the advice must point at the devices, not at `make install GPU=cuda`."""
    cuda_without_devices = {"backend": "CUDA", "gpu_offload": False, "registries": ["CUDA", "CPU"]}
    monkeypatch.setattr(gpu, "backend_info", lambda: cuda_without_devices)
    [warning] = gpu.check_offload(-1)
    assert "sees no usable GPU" in warning and "CUDA_VISIBLE_DEVICES" in warning
    assert "make install GPU=cuda" not in warning
    monkeypatch.setattr(gpu, "backend_info", lambda: {**cuda_without_devices, "backend": "CPU"})
    [warning] = gpu.check_offload(-1)
    assert "rebuild it with `make install GPU=cuda`" in warning
