"""Serving tables as memory-mapped Arrow IPC files, shared by every worker process on a host.

A :class:`~trustfeed.features.context.FeatureAssembler` built from a trust snapshot and the
user-history tables holds its lookups in the process heap: a hash index of Python strings
per id vocabulary and the feature tables as numpy arrays. N workers hold N copies. The
directory written here holds the same state as flat arrays, one Arrow IPC file each, plus
the id indexes of :class:`~trustfeed.features._id_index.HashedIds`. Opening it maps the files
read-only: the pages live once in the operating system's page cache and every worker reads
them in place, so a second worker adds only its own small heap.

Layout (``MANIFEST.json`` lists every file with its BLAKE3 digest, dtype and shape)::

    MANIFEST.json
    merchant_table.arrow, creator_table.arrow, trust.arrow, ...   served arrays
    merchant_ids.arrow, merchant_buckets.arrow, ...               id indexes

Integrity: :func:`open_mapped_tables` hashes every file through its memory map (nothing is
copied to the heap) and compares with the manifest before any array is used. The digest is
BLAKE3 (format 2): a 256-bit cryptographic hash like SHA-256, about 3.5 times faster per core
here, and one file's hash spreads over all cores, so opening a million merchants' tables is
not bound by one core's hashing. Directories of format 1 (SHA-256 per file) still open. The
files must not change while they are served: write a new directory and reload instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..features._id_index import HashedIds
from ..features.context import FeatureAssembler
from ..features.errors import ModelIntegrityError
from ..features.io import atomic_dir

__all__ = ["MappedTables", "open_mapped_tables", "write_mapped_tables", "write_served_arrays"]

KIND = "trustfeed.mapped_tables"
KIND_MARKER = "mapped-tables"  # the kind of output the directory's trustfeed marker names
FORMAT_VERSION = 2
_HASHES = {1: "sha256", 2: "blake3"}  # the file digest of each format version
MANIFEST = "MANIFEST.json"
_VOCABULARIES = ("merchant", "creator", "user")
_CHUNK = 16 << 20


@dataclass(frozen=True)
class MappedTables:
    """Memory-mapped serving tables (see :func:`open_mapped_tables`).

    Attributes
    ----------
    assembler
        The feature assembler reading the mapped arrays.
    digest
        sha256 of ``MANIFEST.json`` (which holds the sha256 of every file).
    manifest
        The parsed manifest.
    nbytes
        Total size of the mapped files.
    """

    assembler: FeatureAssembler
    digest: str
    manifest: Mapping[str, Any]
    nbytes: int


def write_mapped_tables(assembler: FeatureAssembler, path: str | os.PathLike[str], *, force: bool = False) -> str:
    """Write an assembler's serving state as memory-mappable files; returns the manifest digest.

    ``path`` is replaced atomically when it holds earlier tables (with ``force``: any
    trustfeed output); a directory trustfeed did not write is never replaced.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> from types import SimpleNamespace
    >>> snapshot = SimpleNamespace(
    ...     merchants=pd.DataFrame({"merchant_id": ["m1", "m2"], "trust_index": [0.9, 0.3]}),
    ...     creators=pd.DataFrame({"creator_id": ["c1"], "followers": [1200.0]}))
    >>> assembler = FeatureAssembler(snapshot)
    >>> out = tempfile.mkdtemp() + "/tables"
    >>> digest = write_mapped_tables(assembler, out)
    >>> mapped = open_mapped_tables(out)
    >>> candidates = {"user_id": "u1", "ts": pd.Timestamp("2026-01-05", tz="UTC"),
    ...               "creator_id": ["c1", "c9"], "merchant_id": ["m2", "m-new"]}
    >>> import numpy as np
    >>> np.array_equal(mapped.assembler.transform(candidates), assembler.transform(candidates), equal_nan=True)
    True
    """
    indexes = {name: HashedIds.build(ids) for name, ids in assembler.id_vocabularies().items()}
    return write_served_arrays(path, assembler.schema(), assembler.served_arrays(), indexes, force=force)


def write_served_arrays(
    path: str | os.PathLike[str],
    schema: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    indexes: Mapping[str, HashedIds],
    *,
    force: bool = False,
) -> str:
    """The low-level writer: served arrays and id indexes as given (e.g. built column-wise).

    Written to a temporary directory and renamed into place; returns the manifest digest.
    """
    import pyarrow as pa

    entries: dict[str, dict[str, Any]] = {}
    names = [*arrays, *(f"{name}_{part}" for name in _VOCABULARIES for part in ("ids", "buckets"))]

    def array_of(name: str) -> np.ndarray:
        # fetched one at a time, so a mapping that builds each array on access never holds all
        vocabulary, _, part = name.rpartition("_")
        if name not in arrays and vocabulary in _VOCABULARIES:
            return getattr(indexes[vocabulary], part)  # type: ignore[no-any-return]
        return np.ascontiguousarray(arrays[name])

    with atomic_dir(path, KIND_MARKER, force=force) as tmp:
        for name in names:
            array = array_of(name)
            flat = array.reshape(-1)
            if array.dtype.kind == "S":
                column = pa.Array.from_buffers(pa.binary(array.dtype.itemsize), flat.size,
                                               [None, pa.py_buffer(flat.view(np.uint8))])
            else:
                column = pa.array(flat.view(np.uint8) if array.dtype == np.bool_ else flat)
            file = tmp / f"{name}.arrow"
            with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("values", column.type)])) as writer:
                writer.write_batch(pa.record_batch([column], names=["values"]))
            entries[name] = {"file": file.name, "dtype": array.dtype.str, "shape": list(array.shape),
                             "blake3": _digest_mapped(file, "blake3")}
            del array, flat, column
        manifest = {"kind": KIND, "format_version": FORMAT_VERSION, "schema": dict(schema),
                    "ids": {name: len(indexes[name]) for name in _VOCABULARIES}, "arrays": entries}
        text = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        (tmp / MANIFEST).write_bytes(text)
    return hashlib.sha256(text).hexdigest()


def open_mapped_tables(path: str | os.PathLike[str], *, verify: bool = True) -> MappedTables:
    """Map a directory written by :func:`write_mapped_tables`, checking every file first.

    Parameters
    ----------
    path
        The directory.
    verify
        Hash every file (through its memory map, in chunks) against the manifest before use.
        Only skip it for files this process has just written.

    Raises
    ------
    ModelIntegrityError
        A file is missing, altered, of another shape or type than the manifest says, or the
        manifest is not one of these directories; the message names the file.
    """
    import pyarrow as pa

    root = Path(path)
    manifest_path = root / MANIFEST
    try:
        text = manifest_path.read_bytes()
        manifest = json.loads(text)
    except (OSError, ValueError) as error:
        raise ModelIntegrityError(str(manifest_path), f"not a readable manifest of mapped tables ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND or manifest.get("format_version") not in _HASHES:
        raise ModelIntegrityError(str(manifest_path), f"expected {KIND} format {' or '.join(map(str, _HASHES))}")
    algorithm = _HASHES[manifest["format_version"]]
    entries = manifest.get("arrays")
    if not isinstance(entries, dict):
        raise ModelIntegrityError(str(manifest_path), "no array list")
    maps: dict[str, Any] = {}
    for name, entry in entries.items():
        file = root / str(entry.get("file", ""))
        if file.parent != root or not file.is_file():
            raise ModelIntegrityError(str(file), "missing (listed in the manifest)")
        maps[name] = pa.memory_map(str(file), "r")
    if verify:
        # both hashes release the interpreter lock on large updates: files hash in parallel
        # (and BLAKE3 also spreads each large file over the cores itself)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            digests = dict(zip(maps, pool.map(lambda m: _digest_buffer(m.read_buffer(), algorithm), maps.values()),
                               strict=True))
            for m in maps.values():
                m.seek(0)
        for name, digest in digests.items():
            if digest != entries[name].get(algorithm):
                raise ModelIntegrityError(str(root / entries[name]["file"]), "checksum mismatch: the file was altered")
    arrays = {name: _array(root / entries[name]["file"], maps[name], entries[name]) for name in entries}
    try:
        indexes = {name: HashedIds(arrays.pop(f"{name}_ids"), arrays.pop(f"{name}_buckets")) for name in _VOCABULARIES}
        assembler = FeatureAssembler.from_served_arrays(manifest["schema"], arrays, indexes)
    except (KeyError, ValueError) as error:  # SchemaError is a ValueError
        raise ModelIntegrityError(str(manifest_path), f"the tables do not fit together: {error}") from None
    return MappedTables(assembler=assembler, digest=hashlib.sha256(text).hexdigest(), manifest=manifest,
                        nbytes=sum(int(m.size()) for m in maps.values()))


def _array(file: Path, source: Any, entry: Mapping[str, Any]) -> np.ndarray:
    """The array of one IPC file, read in place from its memory map (read-only, no copy)."""
    import pyarrow as pa

    try:
        column = pa.ipc.open_file(source).get_batch(0).column(0)
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(v) for v in entry["shape"])
        data = column.buffers()[1]
        count = int(np.prod(shape, dtype=np.int64))
        storage = np.uint8 if dtype == np.bool_ else dtype
        array = np.frombuffer(data, dtype=storage, count=count, offset=column.offset * np.dtype(storage).itemsize)
    except (pa.ArrowInvalid, KeyError, TypeError, ValueError) as error:
        raise ModelIntegrityError(str(file), f"not the array the manifest describes ({error})") from None
    if len(column) != count:
        raise ModelIntegrityError(str(file), f"{len(column)} values, the manifest says shape {list(shape)}")
    return (array.view(np.bool_) if dtype == np.bool_ else array).reshape(shape)


def _digest_buffer(buffer: Any, algorithm: str) -> str:
    view = memoryview(buffer)
    if algorithm == "blake3":
        from blake3 import blake3

        # one file over every core (large inputs release the interpreter lock)
        hasher = blake3(max_threads=blake3.AUTO)
        hasher.update(view)
        return str(hasher.hexdigest())
    digest = hashlib.sha256()
    for start in range(0, len(view), _CHUNK):
        digest.update(view[start : start + _CHUNK])
    return digest.hexdigest()


def _digest_mapped(file: Path, algorithm: str) -> str:
    import pyarrow as pa

    with pa.memory_map(str(file), "r") as source:
        return _digest_buffer(source.read_buffer(), algorithm)
