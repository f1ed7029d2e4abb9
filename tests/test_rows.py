"""phi1.data.rows: the one reader of JSON lines / Parquet / Arrow, split into pieces that together
read every row exactly once; damage is per row (undecodable bytes, lone surrogates, bad JSON)."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi1.data import rows


def _jsonl(path, n):
  path.write_text("".join(json.dumps({"id": i, "text": f"row {i} " + "x" * (i % 7)}) + "\n"
                          for i in range(n)))
  return str(path)


@pytest.mark.parametrize("world_size", [1, 3, 4, 7])
def test_byte_ranges_read_each_line_once(tmp_path, world_size):
  path = _jsonl(tmp_path / "a.jsonl", 200)
  pieces = rows.pieces(path, piece_bytes=97)   # cuts fall inside lines
  assert len(pieces) > 20
  seen = []
  for rank in range(world_size):
    for piece in rows.assign(pieces, rank, world_size):
      seen += [r["id"] for r in rows.iter_rows(path, piece=piece)]
  assert seen == list(range(200))


def test_parquet_row_groups_and_arrow_batches_are_pieces(tmp_path):
  table = pa.table({"id": list(range(10)), "text": [f"t{i}" for i in range(10)]})
  pq.write_table(table, tmp_path / "a.parquet", row_group_size=3)
  with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink:   # datasets' save_to_disk layout
    with pa.ipc.new_stream(sink, table.schema) as writer:
      for batch in table.to_batches(max_chunksize=4):
        writer.write_batch(batch)
  for name, n_pieces in (("a.parquet", 4), ("a.arrow", 3)):
    path = str(tmp_path / name)
    pieces = rows.pieces(path)
    assert len(pieces) == n_pieces
    got = [[r["id"] for p in rows.assign(pieces, rank, 2) for r in rows.iter_rows(path, piece=p)]
           for rank in range(2)]
    assert got[0] and got[1] and got[0] + got[1] == list(range(10))
    assert [r["text"] for r in rows.iter_rows(path, columns=["text"])][-1] == "t9"


def test_damage_is_per_row(tmp_path):
  path = tmp_path / "d.jsonl"
  with open(path, "wb") as f:
    f.write(b'{"id": 1, "text": "good"}\n')
    f.write(b'{"id": 2, "text": "caf\xe9 latin-1"}\n')             # not UTF-8
    f.write(b'{"id": 3, "text": "lone \\ud800 surrogate"}\n')       # Python cannot encode it
    f.write(b'{"id": 4, "text": "pair \\ud83d\\ude00 kept"}\n')     # a valid escaped pair
    f.write(b'{not json\n')
    f.write(b'[1, 2]\n')
    f.write(b'{"id": 5, "text": "last"}\n')
  counts = rows.RowCounts()
  got = {r["id"]: r["text"] for r in rows.iter_rows(str(path), counts=counts, undecodable="replace")}
  assert got == {1: "good", 2: "caf\ufffd latin-1", 3: "lone \ufffd surrogate",
                 4: "pair \U0001F600 kept", 5: "last"}
  assert (counts.records, counts.undecodable, counts.surrogates, counts.bad_json) == (7, 1, 1, 2)
  for text in got.values():
    text.encode("utf-8")  # every row can be written again
  skipped = rows.RowCounts()
  assert [r["id"] for r in rows.iter_rows(str(path), counts=skipped)] == [1, 3, 4, 5]
  gz = tmp_path / "d.jsonl.gz"
  gz.write_bytes(gzip.compress(path.read_bytes()))
  assert len(rows.pieces(str(gz), piece_bytes=10)) == 1   # gzip is read whole
  assert len(list(rows.iter_rows(str(gz), undecodable="replace"))) == 5


def test_a_json_array_is_named(tmp_path):
  path = tmp_path / "a.json"
  path.write_text(json.dumps([{"text": "a"}]))
  with pytest.raises(ValueError, match="JSON array"):
    list(rows.iter_rows(str(path)))
