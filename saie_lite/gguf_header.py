"""A GGUF file's metadata and tensor shapes, read from its header alone.

``gguf.GGUFReader`` builds a numpy view of every field, the tokenizer's tens of thousands
of strings included: 10 s and more for a 135M model, at every start of a run whose memory
plan asks for a partner's layer count. This reads the same header with ``struct`` in well
under a second and never touches the tensors' data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

# value type -> struct format of one scalar (8: string, 9: array are read by hand)
_SCALAR = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


@dataclass
class Header:
    fields: dict[str, object] = field(default_factory=dict)  # arrays: their length only
    tensor_elements: int = 0


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise ValueError("the header ends early")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.at + n > len(self.data):
            raise ValueError("the header ends early")
        raw = self.data[self.at : self.at + n]
        self.at += n
        return raw.decode("utf-8", "replace")

    def value(self, kind: int):
        if kind in _SCALAR:
            return self.take(_SCALAR[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, count = self.take("I"), self.take("Q")
            if inner in _SCALAR:  # skipped whole: only the length is kept
                self.at += count * struct.calcsize("<" + _SCALAR[inner])
            else:
                for _ in range(count):
                    self.value(inner)
            return count
        raise ValueError(f"unknown value type {kind}")


def read_header(path: str | Path, max_bytes: int = 64 << 20) -> Header:
    """The metadata of the GGUF at ``path``; ``ValueError`` when it is not one."""
    with open(path, "rb") as f:
        data = f.read(max_bytes)  # a header is a few MB at most (the vocabulary)
    r = _Reader(data)
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    r.at = 4
    version = r.take("I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    n_tensors, n_fields = r.take("Q"), r.take("Q")
    out = Header()
    for _ in range(n_fields):
        key = r.string()
        out.fields[key] = r.value(r.take("I"))
    for _ in range(n_tensors):
        r.string()  # name
        dims = [r.take("Q") for _ in range(r.take("I"))]
        r.take("I")  # type
        r.take("Q")  # offset
        count = 1
        for d in dims:
            count *= d
        out.tensor_elements += count
    return out
