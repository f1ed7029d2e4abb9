"""Question/answer inputs (StackOverflow, §2.1's "Q&A content") as one document per question.

Two layouts:
- A Stack Exchange data dump's `Posts.xml` (`<row Id=.. PostTypeId=1|2 ParentId=.. Body=..
  Title=.. Score=.. AcceptedAnswerId=.. Tags=.. />`). Answers come anywhere after their question
  (years later in a dump sorted by Id), so `posts_xml_rows` streams the rows into an on-disk SQLite
  table (under $TMPDIR: bounded memory whatever the dump's size) and then reads each question with
  its answers. Rows are one per line in the dumps, so each is parsed alone and a damaged row (bad
  bytes, broken markup) is counted and skipped, not the file; other layouts go through
  ElementTree's `iterparse`, clearing each element.
- Q&A exports (JSON lines, Parquet): `question` + `answers` (a list of strings or of dicts with
  `text`/`body`/`answer`, `score`/`pm_score`, `accepted`/`selected`/`is_accepted`, as in the
  stack-exchange-preferences export), `question` + `answer`, or `title` + `body` + `answers`.

The text (`qa_text`) is the question then the accepted answer and the best-scored others
(`MAX_ANSWERS`, negative-scored ones dropped); HTML bodies become plain text with `<pre><code>`
blocks kept as fenced code and inline `<code>` as backticks. Scores go to the record's meta.
"""

from __future__ import annotations

import dataclasses
import html.parser
import os
import re
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from typing import Any, Iterator

MAX_ANSWERS = 3
_HTML_HINT = re.compile(r"<(p|pre|code|br|div|a|ul|ol|li|h[1-6]|blockquote|strong|em|b|i)\b[^>]*>",
                        re.I)
_BLOCK_TAGS = {"p", "div", "blockquote", "ul", "ol", "table", "tr", "h1", "h2", "h3", "h4", "h5",
               "h6", "hr"}


@dataclasses.dataclass
class XmlCounts:
  records: int = 0       # <row> elements looked at
  undecodable: int = 0   # rows with bytes that are not UTF-8 (replaced by U+FFFD)
  bad_xml: int = 0       # rows that do not parse (skipped)
  unanswered: int = 0    # questions without a usable answer (skipped)


# ------------------------------------------------------------------------------------------- HTML
class _HtmlToText(html.parser.HTMLParser):
  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.out: list[str] = []
    self.pre = 0

  def handle_starttag(self, tag, attrs):
    if tag == "pre":
      self.pre += 1
      self.out.append("\n\n```\n")
    elif tag == "code" and not self.pre:
      self.out.append("`")
    elif tag == "br":
      self.out.append("\n")
    elif tag == "li":
      self.out.append("\n- ")
    elif tag == "img":
      alt = dict(attrs).get("alt")
      if alt:
        self.out.append(alt)
    elif tag in _BLOCK_TAGS:
      self.out.append("\n\n")

  def handle_endtag(self, tag):
    if tag == "pre" and self.pre:
      self.pre -= 1
      if self.out and not self.out[-1].endswith("\n"):
        self.out.append("\n")
      self.out.append("```\n\n")
    elif tag == "code" and not self.pre:
      self.out.append("`")
    elif tag in _BLOCK_TAGS:
      self.out.append("\n\n")

  def handle_data(self, data):
    self.out.append(data if self.pre else re.sub(r"[ \t\r\n]+", " ", data))


def html_to_text(body: str) -> str:
  """Stack Exchange HTML as plain text; code blocks fenced, their whitespace kept."""
  parser = _HtmlToText()
  parser.feed(body)
  parser.close()
  text = re.sub(r"[ \t]+\n", "\n", "".join(parser.out))
  return re.sub(r"\n{3,}", "\n\n", text).strip()


def _plain(text: str) -> str:
  return html_to_text(text) if _HTML_HINT.search(text) else text.strip()


# ------------------------------------------------------------------------------------------ Q&A
def _answer(a: Any) -> dict:
  if not isinstance(a, dict):
    return {"text": str(a), "score": None, "accepted": False}
  text = next((a[k] for k in ("text", "body", "answer") if isinstance(a.get(k), str)), "")
  score = next((a[k] for k in ("score", "pm_score") if a.get(k) is not None), None)
  accepted = bool(next((a[k] for k in ("accepted", "selected", "is_accepted") if k in a), False))
  return {"text": text, "score": score, "accepted": accepted, "id": a.get("id", a.get("answer_id"))}


def pick_answers(answers: list[dict]) -> list[dict]:
  """The accepted answer first, then the best-scored others; negative scores dropped."""
  order = sorted(range(len(answers)), key=lambda i: (not answers[i]["accepted"],
                                                     -(answers[i]["score"] or 0), i))
  kept = [answers[i] for i in order
          if answers[i]["text"].strip() and (answers[i]["accepted"] or (answers[i]["score"] or 0) >= 0)]
  return kept[:MAX_ANSWERS]


def qa_text(row: dict[str, Any]) -> str | None:
  """The document of a Q&A row (see the module docstring); pops the fields it uses from `row`
  and puts the scores it kept in `row["answer_scores"]`. None: not a Q&A row."""
  if isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
    question, answers = row.pop("question"), [_answer(row.pop("answer"))]
  elif isinstance(row.get("question"), str) and isinstance(row.get("answers"), list):
    question, answers = row.pop("question"), [_answer(a) for a in row.pop("answers")]
  elif isinstance(row.get("body"), str) and "answers" in row:
    question, answers = row.pop("body"), [_answer(a) for a in row.pop("answers") or []]
  else:
    return None
  title = row.pop("title", "") or ""
  question = _plain(question)
  if title and not question.startswith(title):
    question = f"{title}\n\n{question}"
  kept = pick_answers(answers)
  if any(a["score"] is not None for a in kept):
    row["answer_scores"] = [a["score"] for a in kept]
  if any(a["accepted"] for a in answers):
    row["accepted_kept"] = any(a["accepted"] for a in kept)
  return "\n\n".join([f"Question: {question}", *(f"Answer: {_plain(a['text'])}" for a in kept)])


# ------------------------------------------------------------------------------------ Posts.xml
def is_posts_xml(path: str) -> bool:
  return os.path.basename(path).lower().endswith(".xml")


def _xml_rows(path: str, counts: XmlCounts) -> Iterator[dict[str, str]]:
  """The attribute dicts of the <row> elements, one line at a time where rows are one per line
  (the dumps' layout: a damaged row costs that row), else by `iterparse`."""
  with open(path, "rb") as f:
    head = f.read(1 << 16)
  per_line = any(line.lstrip().startswith(b"<row") and line.count(b"<row") == 1
                 for line in head.splitlines()[:-1])
  if not per_line:
    context = ET.iterparse(path, events=("start", "end"))
    _, root = next(context)
    for event, elem in context:
      if event == "end" and elem.tag == "row":
        counts.records += 1
        yield dict(elem.attrib)
        root.clear()   # bounded memory: the parsed rows are dropped
    return
  with open(path, "rb") as f:
    for raw in f:
      raw = raw.strip()
      if not raw.startswith(b"<row"):
        continue
      counts.records += 1
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError:
        counts.undecodable += 1
        line = raw.decode("utf-8", errors="replace")
      try:
        yield dict(ET.fromstring(line).attrib)
      except ET.ParseError:
        counts.bad_xml += 1


def _int(value: str | None) -> int | None:
  try:
    return int(value) if value is not None else None
  except ValueError:
    return None


def _tags(value: str | None) -> list[str]:
  return [t for t in re.split(r"[<>|]+", value or "") if t]


def posts_xml_rows(path: str, counts: XmlCounts | None = None,
                   tmp_dir: str | None = None) -> Iterator[dict]:
  """One Q&A row per question of a Stack Exchange `Posts.xml` (the `qa_text` layout, plus id,
  score and tags), in question Id order."""
  counts = counts if counts is not None else XmlCounts()
  with tempfile.TemporaryDirectory(prefix="posts-", dir=tmp_dir) as tmp:
    db = sqlite3.connect(os.path.join(tmp, "posts.sqlite"))
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, title TEXT, body TEXT, score INT, "
               "accepted INT, tags TEXT)")
    db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, parent INT, body TEXT, score INT)")
    questions, answers = [], []

    def flush():
      db.executemany("INSERT OR REPLACE INTO q VALUES (?,?,?,?,?,?)", questions)
      db.executemany("INSERT OR REPLACE INTO a VALUES (?,?,?,?)", answers)
      questions.clear()
      answers.clear()

    for attrs in _xml_rows(path, counts):
      post_id, kind = _int(attrs.get("Id")), attrs.get("PostTypeId")
      if post_id is None:
        counts.bad_xml += 1
      elif kind == "1":
        questions.append((post_id, attrs.get("Title", ""), attrs.get("Body", ""),
                          _int(attrs.get("Score")), _int(attrs.get("AcceptedAnswerId")),
                          attrs.get("Tags", "")))
      elif kind == "2" and _int(attrs.get("ParentId")) is not None:
        answers.append((post_id, _int(attrs.get("ParentId")), attrs.get("Body", ""),
                        _int(attrs.get("Score"))))
      if len(questions) + len(answers) >= 10_000:
        flush()
    flush()
    db.execute("CREATE INDEX a_parent ON a (parent)")
    db.commit()
    reader = db.cursor()
    for qid, title, body, score, accepted, tags in reader.execute(
        "SELECT id, title, body, score, accepted, tags FROM q ORDER BY id"):
      rows = db.execute("SELECT id, body, score FROM a WHERE parent = ? ORDER BY id", (qid,))
      answer_list = [{"id": aid, "text": abody, "score": ascore, "accepted": aid == accepted}
                     for aid, abody, ascore in rows]
      if not pick_answers([_answer(a) for a in answer_list]):
        counts.unanswered += 1
        continue
      yield {"id": str(qid), "title": title, "question": body, "answers": answer_list,
             "score": score, "tags": _tags(tags)}
    db.close()
