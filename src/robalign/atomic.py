"""Atomic writes: a reader, or another process writing the same file, never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def write_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    """Saves `tensors` (safetensors) next to `path` under a per-process name, then renames it into place."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
