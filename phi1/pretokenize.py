"""`phi1 pretokenize`: tokenize text corpora once, into ArrayRecord shards the trainer reads.

    phi1 pretokenize --tokenizer tokenizer.json --output data/code_tok data/code.jsonl.gz
    # then in the experiment config: data.sources = [{"path": "data/code_tok", "weight": 1.0}]

Inputs are any text sources the pipeline reads (JSON lines, gzipped or not, Parquet, a directory
of .py files); several inputs go into one output. Documents go round-robin into `--num-shards`
shards, one ArrayRecord entry per document (format in `phi1/data/token_docs.py`), with
`metadata.json` recording the tokenizer, the per-shard counts and the bad-record counts. The output
directory appears only when complete (written under a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

from phi1.data import records, token_docs
from phi1.tokenizer import Tokenizer, load_tokenizer

# Random access to single documents (shuffling) wants one record per chunk.
_WRITER_OPTIONS = "group_size:1"


def pretokenize(inputs: Sequence[str], output_dir: str, tokenizer: Tokenizer, *,
                num_shards: int = 8, overwrite: bool = False, log=print) -> dict:
  """Writes `output_dir` (shards + metadata.json) and returns the metadata."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

  if num_shards < 1:
    raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
  for path in inputs:
    if not os.path.exists(path):
      raise FileNotFoundError(f"input {path} does not exist")
    if token_docs.is_pretokenized(path) or not records.is_text_source(path):
      raise ValueError(f"input {path} is not a text source (*.jsonl[.gz], *.json[.gz], *.parquet "
                       "or a directory of .py files)")
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it")

  tmp_dir = f"{output_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)
  dtype = token_docs.token_dtype(tokenizer.vocab_size)
  names = [f"tokens-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
  writers = [array_record_module.ArrayRecordWriter(os.path.join(tmp_dir, n), _WRITER_OPTIONS)
             for n in names]
  shard_records, shard_tokens = [0] * num_shards, [0] * num_shards
  stats = records.DataStats()
  start, doc_index = time.perf_counter(), 0
  try:
    for i, path in enumerate(inputs):
      source_stats = stats.source(f"input{i}", os.path.abspath(path))
      docs = records.read_documents(path, source_stats)
      for ids, prompt_len in token_docs.encode_documents(docs, tokenizer, chunk=1024):
        shard = doc_index % num_shards
        writers[shard].write(token_docs.encode_record(ids, prompt_len, dtype))
        shard_records[shard] += 1
        shard_tokens[shard] += len(ids)
        source_stats.tokens += len(ids)
        doc_index += 1
        if doc_index % 100_000 == 0:
          log(f"{doc_index} documents, {sum(shard_tokens)} tokens, "
              f"{sum(shard_tokens) / (time.perf_counter() - start):,.0f} tokens/s")
  finally:
    for w in writers:
      w.close()
  if doc_index == 0:
    shutil.rmtree(tmp_dir)
    raise ValueError(f"no usable documents in {list(inputs)}:\n{stats.summary()}")

  meta = {
      "format": token_docs.FORMAT,
      "version": token_docs.FORMAT_VERSION,
      "tokenizer_path": getattr(tokenizer, "path", ""),
      "tokenizer_fingerprint": tokenizer.fingerprint,
      "eos_id": tokenizer.eos_id,
      "vocab_size": tokenizer.vocab_size,
      "dtype": str(dtype),
      "documents": doc_index,
      "tokens": sum(shard_tokens),
      "shards": [{"file": n, "records": r, "tokens": t}
                 for n, r, t in zip(names, shard_records, shard_tokens)],
      "inputs": {name: {"path": s.path, **stats.counters(name)}
                 for name, s in stats.sources.items()},
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  with open(os.path.join(tmp_dir, token_docs.METADATA_FILE), "w") as f:
    json.dump(meta, f, indent=2)
  if overwrite and os.path.exists(output_dir):
    shutil.rmtree(output_dir)
  try:
    os.rename(tmp_dir, output_dir)
  except OSError:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if not token_docs.is_pretokenized(output_dir):
      raise
    log(f"{output_dir} was written by another process meanwhile; using it")
    return token_docs.read_metadata(output_dir)
  seconds = time.perf_counter() - start
  log(f"wrote {output_dir}: {doc_index} documents, {meta['tokens']} tokens in {num_shards} shards, "
      f"{seconds:.1f}s ({meta['tokens'] / max(seconds, 1e-9):,.0f} tokens/s)\n{stats.summary()}")
  return meta


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="phi1 pretokenize", description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("inputs", nargs="+", help="text sources: *.jsonl[.gz], *.parquet, .py dirs")
  parser.add_argument("--tokenizer", required=True, help="*.model, tokenizer.json, or a dir")
  parser.add_argument("--output", required=True, help="output directory (created)")
  parser.add_argument("--num-shards", type=int, default=8)
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  args = parser.parse_args(argv)
  try:
    tokenizer = load_tokenizer(args.tokenizer)
    pretokenize(args.inputs, args.output, tokenizer, num_shards=args.num_shards,
                overwrite=args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"phi1 pretokenize: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
