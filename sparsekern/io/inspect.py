"""inspect_file: the per-layer table of a saved file, from its validated header alone."""
import os
from typing import NamedTuple

from .file_header import FileHeader, dtype_name, layer_entries, read_header


class FileInfo(NamedTuple):
    """What `inspect_file` reports; str() gives the table that `sparsekern inspect` prints."""
    path: str
    header: FileHeader
    file_bytes: int

    def layer_bytes(self, name: str) -> int:
        return sum(e.nbytes for e in layer_entries(name, self.header.tensors, {}).values())

    def __str__(self) -> str:
        layers = self.header.layers
        head = ("layer", "format", "shape (out x in)", "dtype", "sparsity", "bytes", "vs dense")
        rows = [head]
        for name, layer in layers.items():
            dense = layer.in_features * layer.out_features * layer.dtype.itemsize
            total = layer.in_features * layer.out_features
            sparsity = 1 - layer.nnz / total if total else 0.0
            size = self.layer_bytes(name)
            rows.append((name or "(model)", layer.format, f"{layer.out_features} x {layer.in_features}",
                         dtype_name(layer.dtype), f"{sparsity:.1%}", f"{size:,}", f"{size / dense:.2f}x" if dense else "-"))
        layer_total = sum(self.layer_bytes(n) for n in layers)
        other = sum(e.nbytes for e in self.header.tensors.values()) - layer_total
        rows.append(("other tensors", "", "", "", "", f"{other:,}", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        packed = sum(layer.format != "dense" for layer in layers.values())
        title = (f"{self.path}: sparsekern file format version {self.header.version}, {len(layers)} "
                 f"SparseLinear layers ({packed} packed, {len(layers) - packed} dense), "
                 f"{len(self.header.tensors)} tensors, {self.file_bytes:,} bytes")
        return "\n".join([title, ""] + lines)

    __repr__ = __str__


def inspect_file(path: str) -> FileInfo:
    """Per-layer format, shape, dtype, sparsity and bytes of a saved file, from its validated
    header alone (no tensor data is read). Raises ValueError for a bad file."""
    header = read_header(path)
    return FileInfo(path, header, os.path.getsize(path))
