"""Plain data over a pipe: the only thing that passes between a sandboxed program and its judge.

A value is builtin data (None, bool, int, float, complex, str, bytes, tuple, list, dict, set,
frozenset, nested, and the builtin types themselves) written as tagged bytes. Decoding builds only those types, so whatever bytes a
program sends, the judge gets plain data or a `PlainDataError`; never an object of the program's
making (no `__eq__` of its own, nothing that runs code when compared, hashed or printed). Unlike
`marshal` (code objects) or `pickle` (any callable), there is no tag for anything else; decoding
stops at `max_bytes` and `max_depth`.

Encoding (in the program's process) takes subclasses of the builtin types (a namedtuple, Counter,
IntEnum, a str subclass) as their builtin base and numpy scalars as their `.item()`. Anything else
(a generator, a function, an instance of a program's class) is a `PlainDataError`, or, where the
caller gives a `handle`, a number that stands for it: the object stays in the program's process
and the judge holds an opaque `_judge.Remote` (MBPP tests build a program's `Node` trees).

Frames are a 4-byte big-endian length and the encoded value.
"""

import os
import struct

MAX_BYTES = 8 << 20
MAX_DEPTH = 100
_DOUBLE = struct.Struct("<d")
_LEN = struct.Struct(">I")
_TAGS = {tuple: b"t", list: b"l", set: b"S", frozenset: b"z"}
_TYPES = {b"t": tuple, b"l": list, b"S": set, b"z": frozenset}
# The builtin types themselves are plain data too (MBPP passes `int` to a function that filters by
# type): written by name, read back from this table.
_BUILTIN_TYPES = {t.__name__: t for t in (bool, int, float, complex, str, bytes, bytearray, tuple,
                                          list, dict, set, frozenset, type(None), object, type)}


class PlainDataError(ValueError):
  pass


def _base(x):
  """x as exact builtin data, or raise. Exact types first: the common case costs one lookup."""
  kind = type(x)
  if kind in _EXACT:
    return x
  if isinstance(x, bool):
    x = bool(x)
  elif isinstance(x, int):
    x = int.__index__(x)
  elif isinstance(x, dict):
    x = dict(dict.items(x))
  elif isinstance(x, (tuple, list, set, frozenset)):
    x = next(b for b in (tuple, list, set, frozenset) if isinstance(x, b))(iter(x))
  elif isinstance(x, (float, complex, str, bytes)):
    x = next(b for b in (float, complex, str, bytes) if isinstance(x, b))(x)
  elif kind.__module__ == "numpy" and getattr(x, "ndim", None) == 0 and hasattr(x, "item"):
    x = x.item()  # a numpy scalar: its Python value
  if type(x) not in _EXACT:
    raise PlainDataError(f"a {kind.__name__} is not plain data (builtin values only)")
  return x


_EXACT = frozenset((type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set,
                    frozenset))


def encode(value, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH, handle=None) -> bytes:
  """`handle(x)`: the number standing for a value that is not plain data (a program's object, kept
  in the program's process), or raise PlainDataError; without it, such a value is an error."""
  out = bytearray()
  pack = _LEN.pack

  def put(x, depth):
    if depth > max_depth:
      raise PlainDataError(f"nested deeper than {max_depth}")
    if len(out) > max_bytes:
      raise PlainDataError(f"larger than {max_bytes} bytes")
    kind = type(x)
    if kind not in _EXACT:  # the common case skips this: exact builtin values
      if kind is type and _BUILTIN_TYPES.get(x.__name__) is x:
        out.extend(b"y" + x.__name__.encode() + b";")
        return
      try:
        x = _base(x)
      except PlainDataError:
        if handle is None:
          raise
        out.extend(b"h" + pack(handle(x)))
        return
      kind = type(x)
    if kind is str or kind is bytes:
      data = x.encode("utf-8", "surrogatepass") if kind is str else x
      out.extend((b"s" if kind is str else b"b") + pack(len(data)) + data)
    elif kind is int:
      data = x.to_bytes((x.bit_length() + 8) // 8, "big", signed=True)
      out.extend(b"i" + pack(len(data)) + data)
    elif kind is bool:
      out.extend(b"T" if x else b"F")
    elif x is None:
      out.extend(b"N")
    elif kind is float:
      out.extend(b"f" + _DOUBLE.pack(x))
    elif kind is complex:
      out.extend(b"c" + _DOUBLE.pack(x.real) + _DOUBLE.pack(x.imag))
    elif kind is dict:
      out.extend(b"d" + pack(len(x)))
      for k, v in list(x.items()):
        put(k, depth + 1)
        put(v, depth + 1)
    else:
      items = list(x)
      out.extend(_TAGS[kind] + pack(len(items)))
      for item in items:
        put(item, depth + 1)

  put(value, 0)
  if len(out) > max_bytes:
    raise PlainDataError(f"larger than {max_bytes} bytes")
  return bytes(out)


_LEN_AT, _DOUBLE_AT = _LEN.unpack_from, _DOUBLE.unpack_from
_CONTAINERS = {ord(tag): kind for tag, kind in _TYPES.items()}


def decode(data: bytes, max_depth=MAX_DEPTH, remote=None):
  """The value `data` encodes; PlainDataError for anything else (truncated, unknown tag, a
  container nested deeper than max_depth, an unhashable key, trailing bytes). `remote(number)`:
  what a handle stands for (without it, a handle is an error)."""
  data = bytes(data)
  end = len(data)

  def length(pos):
    if pos + 4 > end:
      raise PlainDataError("truncated")
    return _LEN_AT(data, pos)[0]

  def get(pos, depth):
    """(the value at pos, the position after it)."""
    if depth > max_depth:
      raise PlainDataError(f"nested deeper than {max_depth}")
    if pos >= end:
      raise PlainDataError("truncated")
    tag = data[pos]
    pos += 1
    if tag in b"isb":  # a length, then that many bytes
      stop = pos + 4 + length(pos)
      if stop > end:
        raise PlainDataError("truncated")
      chunk = data[pos + 4:stop]
      if tag == ord("i"):
        return int.from_bytes(chunk, "big", signed=True), stop
      if tag == ord("b"):
        return chunk, stop
      try:
        return str(chunk, "utf-8", "surrogatepass"), stop
      except UnicodeDecodeError as e:
        raise PlainDataError(f"bad text: {e}") from None
    if tag == ord("N"):
      return None, pos
    if tag == ord("T") or tag == ord("F"):
      return tag == ord("T"), pos
    if tag == ord("f"):
      if pos + 8 > end:
        raise PlainDataError("truncated")
      return _DOUBLE_AT(data, pos)[0], pos + 8
    if tag == ord("c"):
      if pos + 16 > end:
        raise PlainDataError("truncated")
      return complex(_DOUBLE_AT(data, pos)[0], _DOUBLE_AT(data, pos + 8)[0]), pos + 16
    if tag == ord("h") and remote is not None:
      return remote(length(pos)), pos + 4
    if tag == ord("y"):
      stop = data.find(b";", pos, pos + 20)
      name = data[pos:stop].decode("ascii", "replace") if stop >= 0 else None
      if name not in _BUILTIN_TYPES:
        raise PlainDataError(f"unknown type {name!r}" if stop >= 0 else "truncated type name")
      return _BUILTIN_TYPES[name], stop + 1
    if tag == ord("d"):
      n, pos, result = length(pos), pos + 4, {}
      for _ in range(n):
        key, pos = get(pos, depth + 1)
        value, pos = get(pos, depth + 1)
        try:
          result[key] = value
        except TypeError as e:  # an unhashable key
          raise PlainDataError(str(e)) from None
      return result, pos
    kind = _CONTAINERS.get(tag)
    if kind is not None:
      n, pos = length(pos), pos + 4
      if n > end - pos:  # every item takes at least one byte
        raise PlainDataError("truncated")
      items = []
      for _ in range(n):
        item, pos = get(pos, depth + 1)
        items.append(item)
      try:
        return (items if kind is list else kind(items)), pos
      except TypeError as e:
        raise PlainDataError(str(e)) from None
    raise PlainDataError(f"unknown tag {bytes([tag])!r}")

  value, pos = get(0, 0)
  if pos != end:
    raise PlainDataError("trailing bytes")
  return value


def send(fd, value, max_bytes=MAX_BYTES):
  write_frame(fd, encode(value, max_bytes))


# os.read and os.write bound once: a program that rebinds them in its own process breaks only
# its own answers, and promptly (not by looping on a write that writes nothing).
def write_frame(fd, data: bytes, _write=os.write):
  data = memoryview(_LEN.pack(len(data)) + data)
  while data:
    data = data[_write(fd, data):]


def receive(fd, max_bytes=MAX_BYTES, remote=None):
  """The next frame's value; EOFError when the writer is gone, PlainDataError for junk."""
  (n,) = _LEN.unpack(read_exact(fd, 4))
  if n > max_bytes:
    raise PlainDataError(f"a message of {n} bytes (at most {max_bytes})")
  return decode(read_exact(fd, n), remote=remote)


def read_exact(fd, n, _os_read=os.read):
  """n bytes from fd; EOFError when the writer is gone first."""
  chunks = []
  while n:
    chunk = _os_read(fd, min(n, 1 << 20))
    if not chunk:
      raise EOFError
    chunks.append(chunk)
    n -= len(chunk)
  return b"".join(chunks)


def parse_frame(report, max_bytes=1 << 15):
  """The one message in `report` once it is whole, else None; junk reads as ("lost",)."""
  if len(report) < 4:
    return None
  n = int.from_bytes(report[:4], "big")
  if n > max_bytes:
    return ("lost",)
  if len(report) < 4 + n:
    return None
  try:
    return decode(bytes(report[4:4 + n]))
  except PlainDataError:
    return ("lost",)


def cap_text(text: str, max_bytes: int) -> str:
  """`text` cut to at most `max_bytes` bytes both as UTF-8 and as Python stores it (1, 2 or 4 bytes
  a character, by the widest one): a result never costs the host more than that."""
  data = text[:max_bytes].encode("utf-8", "backslashreplace")[:max_bytes]
  text = data.decode("utf-8", "ignore")  # a character cut in half goes
  widest = max(map(ord, text), default=0)
  return text[:max_bytes // (1 if widest < 256 else 2 if widest < 65536 else 4)]
