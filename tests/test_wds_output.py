"""WebDataset shards (vlpipe.outputs.webdataset) read back with the real `webdataset` package, and
JPEG thumbnails (vlpipe.images.thumbnails)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vlpipe.images.thumbnails import make_thumbnail
from vlpipe.outputs.webdataset import WdsWriter, image_extension, jsonable
from vlpipe.schema import image_id

webdataset = pytest.importorskip("webdataset")

DIM = 8


def encode(fmt: str, size=(40, 30), color=(200, 30, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def make_row(i: int, fmt: str, data: bytes, caption: str | None = "a red square") -> dict:
    uri = f"s3://bucket/images/{i:04d}.{image_extension(fmt)}"
    rng = np.random.default_rng(i)
    return {
        "image_id": image_id(uri),
        "uri": uri,
        "width": np.int32(40),
        "height": np.int32(30),
        "orig_width": 40,
        "orig_height": 30,
        "bytes": len(data),
        "format": fmt,
        "caption": caption if caption is None else f"{caption} #{i}",
        "embedding": rng.standard_normal(DIM).astype(np.float16),
        "text": f"alt text {i}",
        "text_score": np.float32(0.25 * i),
        "taken_at": dt.datetime(2024, 5, 17, 12, 30, i, tzinfo=dt.timezone.utc),
        "tags": ["cat", f"tag{i}"],
        "thumbnail": b"\xff\xd8not-in-json",
        "raw_user_blob": b"\x00\x01",
    }


def sample_rows() -> list[tuple[dict, bytes]]:
    out = []
    for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]):
        data = encode(fmt)
        out.append((make_row(i, fmt, data), data))
    data = encode("PNG", color=(1, 2, 3))
    out.append((make_row(6, "XPM", data, caption=None), data))  # unknown format, no caption
    return out


def write(fs, path: str, rows) -> int:
    writer = WdsWriter(fs, path)
    for row, data in rows:
        writer.add(row, data)
    return writer.close()


def read_back(local_path: str) -> dict[str, dict]:
    ds = webdataset.WebDataset(local_path, shardshuffle=False).decode()
    return {s["__key__"]: s for s in ds}


def expected_json(row: dict, data: bytes) -> dict:
    """The row as JSON, plus what the export did: these images carry no metadata, so their
    bytes go out unchanged."""
    out = {"export_format": row["format"], "export_metadata": "unchanged",
           "export_sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    for k, v in row.items():
        if k in ("embedding", "thumbnail") or isinstance(v, bytes):
            continue
        if isinstance(v, dt.datetime):
            v = v.isoformat()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def check_samples(samples: dict[str, dict], rows) -> None:
    assert set(samples) == {row["image_id"] for row, _ in rows}
    for row, data in rows:
        s = samples[row["image_id"]]
        ext = image_extension(row["format"])
        assert s[ext] == data  # raw bytes: .decode() without image handlers leaves them alone
        if row["caption"] is None:
            assert "txt" not in s
        else:
            assert s["txt"] == row["caption"]
        assert s["json"] == expected_json(row, data)
        assert s["json"]["taken_at"] == f"2024-05-17T12:30:{row['taken_at'].second:02d}+00:00"
        assert "thumbnail" not in s["json"] and "raw_user_blob" not in s["json"]
        assert s["npy"].dtype == np.float16
        np.testing.assert_array_equal(s["npy"], row["embedding"])


def test_local_shard_reads_back_with_webdataset(tmp_path):
    fs = fsspec.filesystem("file")
    rows = sample_rows()
    path = str(tmp_path / "wds" / "part-aaaa-bbbb.tar")
    size = write(fs, path, rows)
    assert size == (tmp_path / "wds" / "part-aaaa-bbbb.tar").stat().st_size > 0
    assert [p.name for p in (tmp_path / "wds").iterdir()] == ["part-aaaa-bbbb.tar"]
    check_samples(read_back(path), rows)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert {m.name.split(".", 1)[1] for m in members} == {
        "jpg", "png", "webp", "gif", "bmp", "tiff", "img", "txt", "json", "npy"
    }  # fmt: skip
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    no_caption = rows[-1][0]["image_id"]
    assert f"{no_caption}.img" in {m.name for m in members}
    assert f"{no_caption}.txt" not in {m.name for m in members}


def test_memory_fs_shard_reads_back_with_webdataset(tmp_path):
    fs = fsspec.filesystem("memory")
    rows = sample_rows()
    path = "/wds-test/out/wds/part-0001.tar"
    try:
        size = write(fs, path, rows)
        assert fs.size(path) == size > 0
        assert fs.ls("/wds-test/out/wds", detail=False) == [path]
        local = tmp_path / "copy.tar"
        local.write_bytes(fs.cat(path))
        check_samples(read_back(str(local)), rows)
    finally:
        fs.rm("/wds-test", recursive=True)


def test_same_rows_give_identical_bytes(tmp_path):
    fs = fsspec.filesystem("file")
    a, b = str(tmp_path / "a.tar"), str(tmp_path / "b" / "b.tar")
    write(fs, a, sample_rows())
    write(fs, b, sample_rows())
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b" / "b.tar").read_bytes()


def test_temp_file_until_close_then_abort_leaves_nothing(tmp_path):
    fs = fsspec.filesystem("file")
    folder = tmp_path / "wds"
    final = folder / "part-x.tar"
    writer = WdsWriter(fs, str(final))
    for row, data in sample_rows()[:2]:
        writer.add(row, data)
        assert not final.exists()
        assert (folder / ".tmp-part-x.tar").exists()
    writer.abort()
    assert not final.exists() and list(folder.iterdir()) == []

    writer = WdsWriter(fs, str(final))
    writer.add(*sample_rows()[0])
    assert not final.exists()
    assert writer.close() == final.stat().st_size
    assert sorted(p.name for p in folder.iterdir()) == ["part-x.tar"]
    with pytest.raises(ValueError):
        writer.add(*sample_rows()[0])


def test_empty_writer_writes_no_file(tmp_path):
    for fs, path in [
        (fsspec.filesystem("file"), str(tmp_path / "wds" / "empty.tar")),
        (fsspec.filesystem("memory"), "/wds-empty/wds/empty.tar"),
    ]:
        writer = WdsWriter(fs, path)
        assert writer.close() == 0
        assert not fs.exists(path)
        assert not fs.exists(path.replace("empty.tar", ".tmp-empty.tar"))
        WdsWriter(fs, path).abort()  # nothing to remove: no error
    assert not (tmp_path / "wds").exists()


def test_arrow_scalar_rows_keep_float16_and_plain_embeddings(tmp_path):
    fs = fsspec.filesystem("file")
    row, data = sample_rows()[0]
    table = pa.table(
        {
            "image_id": [row["image_id"]],
            "format": ["JPEG"],
            "caption": ["from arrow"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(row["embedding"]), DIM),
            "taken_at": pa.array([row["taken_at"]], pa.timestamp("us", tz="UTC")),
            "day": pa.array([dt.date(2024, 5, 17)]),
        }
    )
    arrow_row = {name: table.column(name)[0] for name in table.column_names}
    second = dict(make_row(1, "PNG", data), embedding=[0.5] * DIM, caption=None)
    path = str(tmp_path / "s.tar")
    write(fs, path, [(arrow_row, data), (second, data)])
    samples = read_back(path)
    s = samples[row["image_id"]]
    assert s["jpg"] == data and s["txt"] == "from arrow"
    assert s["npy"].dtype == np.float16
    np.testing.assert_array_equal(s["npy"], row["embedding"])
    assert s["json"]["taken_at"] == "2024-05-17T12:30:00+00:00"
    assert s["json"]["day"] == "2024-05-17"
    s2 = samples[second["image_id"]]
    assert s2["npy"].dtype == np.float32 and s2["npy"].tolist() == [0.5] * DIM
    assert "txt" not in s2


def test_row_without_embedding_has_no_npy(tmp_path):
    fs = fsspec.filesystem("file")
    row, data = sample_rows()[0]
    row["embedding"] = None
    path = str(tmp_path / "c.tar")
    write(fs, path, [(row, data)])
    (sample,) = read_back(path).values()
    assert "npy" not in sample and sample["jpg"] == data


def test_jsonable_values():
    assert jsonable(np.float16(0.5)) == 0.5 and type(jsonable(np.int64(3))) is int
    assert jsonable(pa.scalar(7, pa.int16())) == 7
    assert jsonable(dt.date(2020, 1, 2)) == "2020-01-02"
    assert jsonable(np.datetime64("2020-01-02T03:04:05")) == "2020-01-02T03:04:05"
    assert jsonable({"a": [np.int8(1), (2, 3)], "b": b"x"}) == {"a": [1, [2, 3]]}
    assert jsonable(np.arange(3)) == [0, 1, 2]


def test_bad_key_is_refused(tmp_path):
    writer = WdsWriter(fsspec.filesystem("file"), str(tmp_path / "k.tar"))
    with pytest.raises(ValueError):
        writer.add({"image_id": "a.b", "format": "PNG"}, b"x")
    assert writer.close() == 0


def test_image_extension():
    assert image_extension("JPEG") == "jpg" and image_extension("tiff") == "tiff"
    assert image_extension("ICO") == "img" and image_extension(None) == "img"


# --- thumbnails -----------------------------------------------------------------------------


def thumb(image: Image.Image, px: int, **kw) -> Image.Image:
    data = make_thumbnail(image, px, **kw)
    assert data[:3] == b"\xff\xd8\xff"
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == "RGB"
    out.load()
    return out


@pytest.mark.parametrize(
    "size,px,expected",
    [
        ((800, 600), 256, (256, 192)),  # landscape
        ((300, 1000), 100, (30, 100)),  # portrait
        ((64, 48), 256, (64, 48)),  # small: never upscaled
        ((256, 256), 256, (256, 256)),
        ((5000, 2), 64, (64, 1)),  # extreme aspect keeps at least 1 px
    ],
)
def test_thumbnail_sizes(size, px, expected):
    image = Image.new("RGB", size, (10, 120, 200))
    out = thumb(image, px)
    assert out.size == expected and max(out.size) <= px
    assert image.size == size  # the caller's image is not modified


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK", "I;16"])
def test_thumbnail_converts_modes(mode):
    image = Image.new("RGB", (120, 80), (200, 40, 40)).convert(mode)
    out = thumb(image, 60)
    assert out.size == (60, 40)


def test_thumbnail_transparent_is_white():
    image = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    r, g, b = thumb(image, 20).getpixel((10, 10))
    assert min(r, g, b) > 245


def test_thumbnail_quality_changes_size():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    assert len(make_thumbnail(image, 200, quality=30)) < len(make_thumbnail(image, 200, 90))


@pytest.mark.parametrize("px", [0, -1, 4097, 2.5, "128", True, None])
def test_thumbnail_bad_px(px):
    with pytest.raises(ValueError):
        make_thumbnail(Image.new("RGB", (10, 10)), px)


def test_thumbnail_bad_quality():
    with pytest.raises(ValueError):
        make_thumbnail(Image.new("RGB", (10, 10)), 8, quality=0)


def test_json_member_is_plain_utf8(tmp_path):
    fs = fsspec.filesystem("file")
    row, data = sample_rows()[0]
    row["caption"] = "café ☕"
    path = str(tmp_path / "u.tar")
    write(fs, path, [(row, data)])
    with tarfile.open(path) as tar:
        raw = tar.extractfile(f"{row['image_id']}.json").read()
        txt = tar.extractfile(f"{row['image_id']}.txt").read()
    assert json.loads(raw.decode("utf-8"))["caption"] == "café ☕"
    assert txt.decode("utf-8") == "café ☕"


def test_arrow_null_scalars_omit_txt_and_npy(tmp_path):
    fs = fsspec.filesystem("file")
    row, data = sample_rows()[1]
    table = pa.table(
        {
            "image_id": [row["image_id"]],
            "format": ["PNG"],
            "caption": pa.array([None], pa.string()),
            "embedding": pa.array([None], pa.list_(pa.float16(), DIM)),
            "thumbnail": pa.array([b"jpeg"], pa.binary()),
        }
    )
    arrow_row = {name: table.column(name)[0] for name in table.column_names}
    path = str(tmp_path / "n.tar")
    write(fs, path, [(arrow_row, data)])
    (sample,) = read_back(path).values()
    assert sample["png"] == data and "txt" not in sample and "npy" not in sample
    assert sample["json"] == {
        "image_id": row["image_id"], "format": "PNG", "caption": None, "export_format": "PNG",
        "export_metadata": "unchanged", "export_sha256": hashlib.sha256(data).hexdigest(),
    }  # fmt: skip


@pytest.mark.parametrize("proto", ["file", "memory"])
def test_rewrite_replaces_an_existing_shard(tmp_path, proto):
    fs = fsspec.filesystem(proto)
    path = str(tmp_path / "r" / "part.tar") if proto == "file" else "/wds-rewrite/part.tar"
    try:
        write(fs, path, sample_rows()[:3])
        first = fs.cat(path)
        write(fs, path, sample_rows()[:1])  # a retry with different rows replaces the shard
        assert fs.cat(path) != first
        assert len(read_back_bytes(tmp_path, fs.cat(path))) == 1
        assert fs.ls(fs._parent(path), detail=False) == [path]
    finally:
        if proto == "memory":
            fs.rm("/wds-rewrite", recursive=True)


def read_back_bytes(tmp_path, data: bytes) -> dict[str, dict]:
    local = tmp_path / "readback.tar"
    local.write_bytes(data)
    return read_back(str(local))
