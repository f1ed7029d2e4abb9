"""Content-addressed response cache in SQLite, so a rerun or a resumed run never pays twice.

The key is a hash of everything that determines the output (model, messages, generation params,
seed) plus a revision salt you bump to force fresh generations. Responses are group-committed in WAL
mode (every `commit_every` puts or `commit_interval_s`, whichever comes first; a commit per put costs
~160 us of blocked event loop, a sixth of the per-request budget at 1,000 requests/s): a process
killed at any instant loses at most that window of answers, which a rerun asks for again. Records
already written to shards are never requested again whatever the cache lost. The same file also remembers submitted Batch API jobs, so a killed batch run
resumes polling instead of paying for a second submission.
"""

import json
import os
import sqlite3
import time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
  key TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  response TEXT NOT NULL,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
  batch_id TEXT PRIMARY KEY,
  keys TEXT NOT NULL,
  status TEXT NOT NULL,
  created REAL NOT NULL
);
"""


class ResponseCache:
  """key -> response dict (text, finish_reason, usage, cost_usd, ...)."""

  def __init__(self, path: str, commit_every: int = 64, commit_interval_s: float = 0.05):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    self.path = path
    # isolation_level=None: autocommit, one transaction per put (a committed put survives SIGKILL).
    self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    self._db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives the process being killed; only an OS crash can lose the
    # last transactions, which costs a re-request, never a wrong record.
    self._db.execute("PRAGMA synchronous=NORMAL")
    self._db.executescript(_SCHEMA)
    self.commit_every, self.commit_interval_s = commit_every, commit_interval_s
    self.pending = 0
    self._first_pending = 0.0
    self._closed = False

  def get(self, key: str) -> dict | None:
    row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])

  def contains(self, key: str) -> bool:
    return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

  def put(self, key: str, model: str, response: dict):
    now = time.monotonic()
    if not self._db.in_transaction:
      self._db.execute("BEGIN")
      self._first_pending = now
    self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                     (key, model, json.dumps(response, ensure_ascii=False), time.time()))
    self.pending += 1
    if self.pending >= self.commit_every or now - self._first_pending >= self.commit_interval_s:
      self.flush()

  def flush(self):
    """Commit every pending put (call when answers stop arriving; `close` does)."""
    if self._closed:
      return
    if self._db.in_transaction:
      self._db.execute("COMMIT")
    self.pending = 0

  def __len__(self) -> int:
    return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

  # Batch API bookkeeping.
  def add_batch(self, batch_id: str, keys: list[str]):
    self.flush()
    self._db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)",
                     (batch_id, json.dumps(keys), "submitted", time.time()))

  def set_batch_status(self, batch_id: str, status: str):
    self.flush()  # the answers ingested from this batch first, then its new status
    self._db.execute("UPDATE batches SET status = ? WHERE batch_id = ?", (status, batch_id))

  def open_batches(self) -> dict[str, list[str]]:
    """Submitted batches whose results have not been ingested yet: batch_id -> keys."""
    rows = self._db.execute("SELECT batch_id, keys FROM batches WHERE status = 'submitted'")
    return {batch_id: json.loads(keys) for batch_id, keys in rows}

  def close(self):
    self.flush()
    self._db.close()
    self._closed = True
