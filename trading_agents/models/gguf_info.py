"""Read what a GGUF file says about itself, without reading its tensor data.

Only the header (metadata and tensor directory, a few MB even for a 26 GB Mixtral) is
parsed, with plain buffered reads: nothing is memory-mapped and no weights are touched.
Every problem is a :class:`~trading_agents.errors.ModelFileError` naming the path and the fix.

Example::

    info = read_gguf_info(Path("models/llm_models/mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf"))
    print(info.architecture, info.expert_count, info.quantization)   # llama 8 Q4_K_M
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from trading_agents.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# llama.cpp's llama_ftype values (general.file_type) -> the names people use for them.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}

# GGUF metadata value types: id -> struct format (None: variable length).
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says. ``data_end`` is the size the file must have at least."""

    path: Path
    size_bytes: int
    version: int
    architecture: str | None
    name: str | None
    expert_count: int | None
    expert_used_count: int | None
    file_type: int | None
    quantization: str
    context_length: int | None
    block_count: int | None
    head_count_kv: int | None
    embedding_length: int | None
    chat_template: str | None
    tensor_count: int
    data_end: int

    @property
    def is_moe(self) -> bool:
        return bool(self.expert_count and self.expert_count > 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["chat_template"] = None if self.chat_template is None else f"<{len(self.chat_template)} chars>"
        return data


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise _Truncated
        return data

    def skip(self, n: int) -> None:
        if self.fh.tell() + n > self.size:
            raise _Truncated
        self.fh.seek(n, 1)

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.fh.tell() + n > self.size:
            raise _Truncated
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype = self.unpack("<I")
            count = self.unpack("<Q")
            if itype in _SCALARS:
                width = struct.calcsize(_SCALARS[itype])
                if keep and count <= 64:
                    return [self.unpack(_SCALARS[itype]) for _ in range(count)]
                self.skip(width * count)
                return count
            if count > self.size:  # every element takes at least one byte
                raise _Truncated
            items = [self.value(itype, keep=False) for _ in range(count)]
            return items if keep and count <= 64 else count
        raise ValueError(f"unknown metadata value type {vtype}")


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse the header of the GGUF file at ``path``.

    Raises :class:`ModelFileError` when the file is missing, a directory, empty, not GGUF,
    of an unsupported GGUF version, or truncated (header cut short, or shorter than its
    tensor data needs).
    """
    path = Path(path)
    redownload = "delete it and download it again (`trading-agents models download NAME`)"
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; run `trading-agents models download NAME`")
    if path.is_dir():
        raise ModelFileError(f"model path {path} is a directory; give the .gguf file inside it")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"model file {path} is empty; {redownload}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
            if magic != GGUF_MAGIC:
                raise ModelFileError(
                    f"model file {path} is not a GGUF file (starts with {magic!r}); use a .gguf model file"
                )
            reader = _Reader(fh, size)
            info = _parse(reader, path, size)
    except _Truncated:
        raise ModelFileError(f"model file {path} is truncated (header cut short); {redownload}") from None
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise ModelFileError(f"model file {path} has a corrupt GGUF header ({exc}); {redownload}") from None
    except PermissionError:
        raise ModelFileError(f"model file {path} is not readable; fix its permissions") from None
    if size < info.data_end:
        raise ModelFileError(
            f"model file {path} is truncated ({size} of {info.data_end} bytes); {redownload}"
        )
    return info


def _parse(reader: _Reader, path: Path, size: int) -> GGUFInfo:
    version = reader.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(
            f"model file {path} uses GGUF version {version}; only versions 2 and 3 are supported, "
            "use a file converted by a recent llama.cpp"
        )
    tensor_count = reader.unpack("<Q")
    kv_count = reader.unpack("<Q")
    if tensor_count > size or kv_count > size:
        raise _Truncated
    meta: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string()
        vtype = reader.unpack("<I")
        meta[key] = reader.value(vtype, keep=True)

    data_size = 0
    for _ in range(tensor_count):
        reader.string()
        n_dims = reader.unpack("<I")
        if n_dims > 8:
            raise ValueError(f"tensor with {n_dims} dimensions")
        dims = [reader.unpack("<Q") for _ in range(n_dims)]
        ttype = reader.unpack("<I")
        offset = reader.unpack("<Q")
        data_size = max(data_size, offset + _tensor_nbytes(dims, ttype))
    alignment = int(meta.get("general.alignment") or DEFAULT_ALIGNMENT)
    header_end = reader.fh.tell()
    data_start = -(-header_end // alignment) * alignment

    arch = _str(meta.get("general.architecture"))

    def arch_int(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}") if arch else None
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    file_type = meta.get("general.file_type")
    file_type = int(file_type) if isinstance(file_type, int) else None
    template = meta.get("tokenizer.chat_template")
    return GGUFInfo(
        path=path,
        size_bytes=size,
        version=version,
        architecture=arch,
        name=_str(meta.get("general.name")),
        expert_count=arch_int("expert_count"),
        expert_used_count=arch_int("expert_used_count"),
        file_type=file_type,
        quantization=FILE_TYPE_NAMES.get(file_type, "unknown") if file_type is not None else "unknown",
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        embedding_length=arch_int("embedding_length"),
        chat_template=template if isinstance(template, str) else None,
        tensor_count=tensor_count,
        data_end=data_start + data_size,
    )


def _tensor_nbytes(dims: list[int], ttype: int) -> int:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown tensor type {ttype}") from None
    n = 1
    for d in dims:
        n *= d
    return n // block * type_size


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
