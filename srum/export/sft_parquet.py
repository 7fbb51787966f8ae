# SPDX-License-Identifier: Apache-2.0
"""Generated images + manifest -> parquet for the plain fine-tuning (SFT) baseline.

The paper compares SRUM with supervised fine-tuning on the same generated images. Bagel's
text-to-image parquet datasets hold two columns per row: ``image`` (encoded image bytes)
and ``captions`` (a JSON string, here ``{"caption": <prompt>}``). We store the PNG bytes
exactly as the generate stage wrote them: no decode, no JPEG re-encode, so the baseline
trains on the very pixels SRUM saw. Extra columns (``image_id``, ``prompt_id``,
``category``, ``seed``) are ignored by Bagel's reader and keep rows traceable.

Large sets are split into ``<stem>-00000-of-000NN.parquet`` files of ``rows_per_file``
rows each, written through temporary names and renamed when complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from srum.stages.common import read_image_manifest

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _encoded_bytes(path: Path) -> bytes:
    """The file's bytes when it is already a lossless format, else a PNG re-encode."""
    data = path.read_bytes()
    if data.startswith(_PNG_MAGIC):
        return data
    import io

    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.format == "JPEG":
            return data  # already lossy: keep its bytes rather than decode and re-encode
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def export_sft_parquet(manifest: str | os.PathLike, out_path: str | os.PathLike, rows_per_file: int = 5000) -> dict:
    """Write the parquet file(s); returns counts and the written paths.

    Rows whose image is missing or unreadable are skipped and reported (``errors``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    items, errors = read_image_manifest(manifest)
    rows = []
    for item in items:
        if not item.image_path.is_file():
            errors.append(f"{item.source}: image not found: {item.image_path}")
            continue
        try:
            data = _encoded_bytes(item.image_path)
        except OSError as err:
            errors.append(f"{item.source}: cannot read image {item.image_path}: {err}")
            continue
        rows.append({"image": data, "captions": json.dumps({"caption": item.prompt}, ensure_ascii=False),
                     "image_id": item.image_id, "prompt_id": item.prompt_id, "category": item.category,
                     "seed": item.row.get("seed")})
    if not rows:
        raise ValueError(f"{manifest}: no exportable rows ({len(errors)} skipped)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("image", pa.binary()), ("captions", pa.string()), ("image_id", pa.string()),
                        ("prompt_id", pa.string()), ("category", pa.string()), ("seed", pa.int64())])
    chunks = [rows[i:i + rows_per_file] for i in range(0, len(rows), rows_per_file)]
    if len(chunks) == 1:
        paths = [out_path]
    else:
        stem = out_path.name[:-len(".parquet")] if out_path.name.endswith(".parquet") else out_path.name
        paths = [out_path.with_name(f"{stem}-{i:05d}-of-{len(chunks):05d}.parquet") for i in range(len(chunks))]
    for chunk, path in zip(chunks, paths):
        table = pa.Table.from_pylist(chunk, schema=schema)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    return {"rows": len(rows), "files": [str(p) for p in paths], "skipped": len(errors), "errors": errors[:100]}
