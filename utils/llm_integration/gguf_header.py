"""Read what a GGUF file says about itself, without reading its tensor data.

Only the header (metadata and tensor directory, a few MB even for a 26 GB Mixtral) is
parsed, with plain buffered reads: nothing is memory-mapped and no weights are touched.
Every problem is a :class:`GGUFHeaderError` whose ``kind`` says what is wrong.

Cheap to import: the standard library only (``gguf.constants`` is imported on the first
read, for the tensor type sizes).

Example::

    info = read_gguf_info(Path("models/llm_models/mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf"))
    print(info.architecture, info.expert_count, info.quantization)   # llama 8 Q4_K_M
    print(info.kv_bytes_per_token)                                    # 131072
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

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

ErrorKind = Literal[
    "missing", "directory", "empty", "not_gguf", "version", "truncated", "corrupt", "unreadable"
]


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
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    embedding_length: int | None
    chat_template: str | None
    tensor_count: int
    data_end: int
    # (name, bytes) of every tensor, in file order: where each layer's weights would live
    tensors: tuple[tuple[str, int], ...] = field(default=(), repr=False)

    @property
    def is_moe(self) -> bool:
        return bool(self.expert_count and self.expert_count > 1)

    @property
    def kv_bytes_per_token(self) -> int | None:
        """f16 KV cache bytes per context token, or None when the header does not tell.

        2 bytes x layers x KV heads x (key length + value length); the key length defaults to
        ``embedding_length // head_count``, the value length to the key length and the KV
        heads to ``head_count``.
        """
        embd, heads = self.embedding_length, self.head_count
        kv_heads = self.head_count_kv or heads
        k_len = self.key_length or (embd // heads if embd and heads else None)
        v_len = self.value_length or k_len
        if not (self.block_count and kv_heads and k_len and v_len):
            return None
        return 2 * self.block_count * kv_heads * (k_len + v_len)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["chat_template"] = None if self.chat_template is None else f"<{len(self.chat_template)} chars>"
        del data["tensors"]
        return data


class GGUFHeaderError(ValueError):
    """A file whose GGUF header cannot be read; ``kind`` says why.

    ``kind`` is one of ``missing``, ``directory``, ``empty``, ``not_gguf``, ``version``,
    ``truncated``, ``corrupt``, ``unreadable``. ``detail`` is the variable part of the message:
    the first bytes (``repr``) for ``not_gguf``, the version for ``version``, ``header cut
    short`` or ``N of M bytes`` for ``truncated``, the parse error for ``corrupt`` and the OS
    error for ``unreadable`` (also the ``__cause__``). When only the tensor data is cut short
    the header itself was read: ``info`` holds it (None otherwise).
    """

    def __init__(
        self, kind: ErrorKind, path: Path, message: str, *, detail: str = "", info: GGUFInfo | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
        self.detail = detail
        self.info = info


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


def read_gguf_info(path: Path | str) -> GGUFInfo:
    """Parse the header of the GGUF file at ``path``.

    Raises :class:`GGUFHeaderError` when the file is missing, a directory, empty, not GGUF,
    of an unsupported GGUF version, truncated (header cut short, or shorter than its tensor
    data needs), corrupt or unreadable.
    """
    path = Path(path)
    try:
        return _read(path)
    except GGUFHeaderError:
        raise
    except _Truncated:
        raise GGUFHeaderError(
            "truncated", path, f"{path} is truncated (header cut short)", detail="header cut short"
        ) from None
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        message = f"{path} has a corrupt GGUF header ({exc})"
        raise GGUFHeaderError("corrupt", path, message, detail=str(exc)) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise GGUFHeaderError("unreadable", path, f"{path} cannot be read ({reason})", detail=reason) from exc


def _read(path: Path) -> GGUFInfo:
    if not path.exists():
        raise GGUFHeaderError("missing", path, f"{path} does not exist")
    if path.is_dir():
        raise GGUFHeaderError("directory", path, f"{path} is a directory, not a GGUF file")
    size = path.stat().st_size
    if size == 0:
        raise GGUFHeaderError("empty", path, f"{path} is empty")
    with path.open("rb") as fh:
        magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFHeaderError(
                "not_gguf", path, f"{path} is not a GGUF file (starts with {magic!r})", detail=repr(magic)
            )
        info = _parse(_Reader(fh, size), path, size)
    if size < info.data_end:
        detail = f"{size} of {info.data_end} bytes"
        raise GGUFHeaderError("truncated", path, f"{path} is truncated ({detail})", detail=detail, info=info)
    return info


def _parse(reader: _Reader, path: Path, size: int) -> GGUFInfo:
    version = reader.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFHeaderError(
            "version",
            path,
            f"{path} uses GGUF version {version}; only versions 2 and 3 are supported",
            detail=str(version),
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
    tensors: list[tuple[str, int]] = []
    for _ in range(tensor_count):
        tname = reader.string()
        n_dims = reader.unpack("<I")
        if n_dims > 8:
            raise ValueError(f"tensor with {n_dims} dimensions")
        dims = [reader.unpack("<Q") for _ in range(n_dims)]
        ttype = reader.unpack("<I")
        offset = reader.unpack("<Q")
        nbytes = _tensor_nbytes(dims, ttype)
        tensors.append((tname, nbytes))
        data_size = max(data_size, offset + nbytes)
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
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        embedding_length=arch_int("embedding_length"),
        chat_template=template if isinstance(template, str) else None,
        tensor_count=tensor_count,
        data_end=data_start + data_size,
        tensors=tuple(tensors),
    )


def _tensor_nbytes(dims: list[int], ttype: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # ~0.1 s: only when reading

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
