"""Read what a GGUF file says about itself, without reading its tensor data.

The parsing is :mod:`utils.llm_integration.gguf_header`'s; here every problem becomes a
:class:`~trading_agents.errors.ModelFileError` naming the path and the fix.

Example::

    info = read_gguf_info(Path("models/llm_models/mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf"))
    print(info.architecture, info.expert_count, info.quantization)   # llama 8 Q4_K_M
"""

from __future__ import annotations

from pathlib import Path

from trading_agents.errors import ModelFileError
from utils.llm_integration import gguf_header
from utils.llm_integration.gguf_header import FILE_TYPE_NAMES, GGUFHeaderError, GGUFInfo

__all__ = ["FILE_TYPE_NAMES", "GGUFHeaderError", "GGUFInfo", "read_gguf_info"]

_REDOWNLOAD = "delete it and download it again (`trading-agents models download NAME`)"

# GGUFHeaderError.kind -> the message, with the fix ({detail}: the error's variable part).
_MESSAGES: dict[str, str] = {
    "missing": "model file {path} does not exist; run `trading-agents models download NAME`",
    "directory": "model path {path} is a directory; give the .gguf file inside it",
    "empty": "model file {path} is empty; " + _REDOWNLOAD,
    "not_gguf": "model file {path} is not a GGUF file (starts with {detail}); use a .gguf model file",
    "version": (
        "model file {path} uses GGUF version {detail}; only versions 2 and 3 are supported, "
        "use a file converted by a recent llama.cpp"
    ),
    "truncated": "model file {path} is truncated ({detail}); " + _REDOWNLOAD,
    "corrupt": "model file {path} has a corrupt GGUF header ({detail}); " + _REDOWNLOAD,
    "unreadable": "model file {path} is not readable; fix its permissions",
}
# An OS error other than a permission one (an I/O error, say): the permissions are not the fix.
_IO_ERROR = "model file {path} cannot be read ({detail})"


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse the header of the GGUF file at ``path``.

    Raises :class:`ModelFileError` when the file is missing, a directory, empty, not GGUF,
    of an unsupported GGUF version, or truncated (header cut short, or shorter than its
    tensor data needs).
    """
    try:
        return gguf_header.read_gguf_info(path)
    except GGUFHeaderError as exc:
        template = _MESSAGES[exc.kind]
        if exc.kind == "unreadable" and not isinstance(exc.__cause__, PermissionError):
            template = _IO_ERROR
        raise ModelFileError(template.format(path=exc.path, detail=exc.detail)) from None
