"""Reading a market data file into a raw table; a file that cannot be read is a MarketDataError.

A DataFrame is taken as it is (a copy). A ``.parquet``/``.pq`` file is read with pandas
(pyarrow); any failure to read it (not Parquet, corrupt, truncated) names the file.

A CSV file (``.csv``, or any other name; ``.gz``, ``.bz2``, ``.xz``, ``.zip`` and ``.zst``
are decompressed first) is read whole and decoded before pandas parses it:

- encoding: a byte-order mark decides (UTF-8, UTF-16 or UTF-32); UTF-16 without one is
  recognised by its zero bytes; otherwise UTF-8, and text that is not valid UTF-8 is read as
  Latin-1 (the columns pyppo reads, numbers and timestamps, are ASCII, which all of these
  write the same way). Other binary content is refused, a Parquet file by its name.
- separator: whichever of ``,`` ``;`` tab ``|`` the header line holds most of (``,`` when
  none), so European exports with ``;`` and decimal commas read their columns right.
- truncation: a last line without a line end and with fewer fields than the header is a
  file cut short, refused. Data lines with more fields than the header are refused too
  (pandas would otherwise take the first column as the index, shifting every column).
- lines: where blank lines (which pandas skips) precede a data row, the file line of every
  row is recorded in the returned name (:class:`~pyppo.data.errors._Source`), so that
  messages name the right line.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pyppo.data.errors import DataSource, MarketDataError

__all__: list[str] = []

_SEPARATORS = (",", ";", "\t", "|")
_SEP_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_COMPRESSED = (".gz", ".bz2", ".xz", ".zip", ".zst")
_LINE_END = re.compile(r"\r\n|\r|\n")
_BLANK_LF = re.compile(r"\n[ \t\f\v]*\r?\n")  # a blank line after a line ending in \n
_BLANK_CR = re.compile(r"\r[ \t\f\v]*\r")  # the same where lines end in \r alone
_BROKEN_TEXT = (
    "the file is cut short or damaged (re-download or re-export it), or mixes encodings "
    "(re-save it as a UTF-8 CSV file)"
)


def read_table(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, DataSource]:
    """The raw table and the name messages use for it (with file lines where needed)."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), DataSource("DataFrame")
    path = Path(source)
    if not path.exists():
        raise MarketDataError(
            f"market data file not found: {path} (absolute: {path.resolve()}); check the path, "
            "or leave the data option out to train on the embedded synthetic market"
        )
    if path.is_dir():
        raise MarketDataError(f"{path} is a directory; pass a CSV or Parquet file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return _read_parquet(path), DataSource(str(path))
    return _read_csv(path)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise MarketDataError(
            f"{path}: reading Parquet needs pyarrow: pip install pyarrow"
        ) from err
    try:
        return pd.read_parquet(path)
    except Exception as err:  # any failure of the Parquet reader is a problem of the file
        raise MarketDataError(
            f"{path}: not a readable Parquet file ({_one_line(err)}); the file is "
            "damaged or cut short: re-download or re-export it (or, if it is a CSV file, name "
            "it .csv)"
        ) from err


def _one_line(err: BaseException, named: bool = True) -> str:
    """A library's error as one line of text (messages are printed as one line)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if named else text


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed by suffix."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        if suffix == ".bz2":
            with bz2.open(path, "rb") as f:
                return f.read()
        if suffix == ".xz":
            with lzma.open(path, "rb") as f:
                return f.read()
        if suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise MarketDataError(
                        f"{path}: a .zip file must hold exactly one CSV file, this one holds "
                        f"{len(names)}: {names[:5]}; unzip it and pass the CSV file"
                    )
                return z.read(names[0])
        if suffix == ".zst":
            try:
                import zstandard
            except ImportError as err:
                raise MarketDataError(
                    f"{path}: reading .zst needs zstandard: pip install zstandard"
                ) from err
            with path.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
                return r.read()
        return path.read_bytes()
    except MarketDataError:
        raise
    except PermissionError as err:
        raise MarketDataError(
            f"{path}: cannot read the file ({err.strerror}); check its permissions"
        ) from err
    except Exception as err:  # any failure of the decompressor is a problem of the file
        what = f"the {suffix} file" if suffix in _COMPRESSED else "the file"
        raise MarketDataError(
            f"{path}: cannot read {what} ({_one_line(err)}); the file is damaged "
            "or cut short: re-download or re-export it"
        ) from err


def _decode(data: bytes, path: Path) -> str:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as err:
                raise MarketDataError(
                    f"{path}: starts with a {encoding} byte-order mark but is not valid "
                    f"{encoding} text ({err}); {_BROKEN_TEXT}"
                ) from err
    if data.startswith(b"PAR1"):
        raise MarketDataError(f"{path}: this is a Parquet file; name it .parquet")
    head = data[:4096]
    if b"\x00" in head:
        # UTF-16 without a byte-order mark: every ASCII character has a zero byte beside it.
        even, odd = head[0::2].count(0), head[1::2].count(0)
        encoding = (
            "utf-16-le"
            if even == 0 and odd >= len(head) // 4
            else "utf-16-be"
            if odd == 0 and even >= len(head) // 4
            else None
        )
        if encoding is None:
            raise MarketDataError(f"{path}: binary data, not a CSV file; pass a CSV file")
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as err:
            raise MarketDataError(
                f"{path}: looks like {encoding} text but is not valid ({err}); {_BROKEN_TEXT}"
            ) from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _separator(header: str) -> str:
    counts = {sep: header.count(sep) for sep in _SEPARATORS}
    best = max(_SEPARATORS, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _fields(line: str, sep: str) -> int:
    try:
        return len(next(csv.reader([line], delimiter=sep)))
    except (csv.Error, StopIteration):
        return 0


def _has_blank_line(text: str, first: str) -> bool:
    """Whether a blank (or whitespace-only) line comes before the last non-blank one."""
    if not first.strip():
        return True
    tail = text[-4096:]
    end = len(text) - len(tail) + len(tail.rstrip()) if tail.strip() else len(text.rstrip())
    blank = _BLANK_LF if "\n" in text else _BLANK_CR
    return blank.search(text, 0, end) is not None


def _read_csv(path: Path) -> tuple[pd.DataFrame, DataSource]:
    data = _read_bytes(path)
    text = _decode(data, path)
    if "\x00" in text:
        raise MarketDataError(f"{path}: binary data, not a CSV file; pass a CSV file")
    if not text or text.isspace():
        raise MarketDataError(f"{path}: the file is empty; it needs a header line and bars")
    # Blank lines (pandas skips them) shift the file line of the rows after them: only then
    # are the file lines of all rows worked out.
    numbered = None
    first_end = _LINE_END.search(text)
    header = text[: first_end.start()] if first_end else text
    if _has_blank_line(text, header):
        numbered = [(i + 1, s) for i, s in enumerate(_LINE_END.split(text)) if s.strip()]
        header = numbered[0][1]
    sep = _separator(header)
    width = _fields(header, sep)
    end = max(text.rfind("\n"), text.rfind("\r"))
    if not text.endswith(("\n", "\r")) and end >= 0:
        last = text[end + 1 :]
        if last.strip() and last.strip() != header.strip() and _fields(last, sep) < width:
            number = sum(1 for _ in _LINE_END.finditer(text)) + 1
            raise MarketDataError(
                f"{path}: line {number} has {_fields(last, sep)} of the {width} fields of the "
                f"header and no line end ({last[:80]!r}): the file looks cut short. Re-download "
                "or re-export it, or delete the incomplete last line"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DtypeWarning on mixed columns: checked later
            plain = len(data) == len(text) and data.isascii()  # ASCII read as is
            utf8 = data if plain else text.encode("utf-8")
            frame = pd.read_csv(io.BytesIO(utf8), sep=sep, encoding="utf-8")
    except pd.errors.EmptyDataError as err:
        raise MarketDataError(
            f"{path}: the file is empty; it needs a header line and bars"
        ) from err
    except (pd.errors.ParserError, ValueError, csv.Error) as err:
        raise MarketDataError(
            f"{path}: not a readable CSV file ({_one_line(err, named=False)}); the separator is "
            f"{_SEP_NAMES[sep]} (read from the header line): check that every line has the "
            "header's fields, and quoting (numbers with decimal commas need ';' as the separator)"
        ) from err
    if not isinstance(frame.index, pd.RangeIndex):
        # Every data line has more fields than the header: pandas took the first column as
        # the index, which would shift every column by one.
        raise MarketDataError(
            f"{path}: the data lines have more fields than the header ({width}); the "
            f"separator is {_SEP_NAMES[sep]} (read from the header line): check the separator, "
            "and decimal commas (they need ';' as the separator)"
        )
    row_lines = None
    if numbered is not None and len(numbered) - 1 == len(frame):
        row_lines = np.array([n for n, _ in numbered[1:]], dtype=np.int64)
    return frame, DataSource(str(path), row_lines)
