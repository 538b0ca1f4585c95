"""knowledge_graph.dumps.sql on hand-written dumps in the real mysqldump layout."""

from __future__ import annotations

import bz2
import gzip
import random
import warnings
from pathlib import Path

import pyarrow as pa
import pytest

from knowledge_graph.dumps import DumpTruncatedWarning, sql
from knowledge_graph.dumps.sql import (
    iter_pagelinks,
    pagelinks_schema,
    read_linktarget,
    read_page,
    read_page_props,
    read_redirect,
    read_sql_dump,
    read_sql_schema,
)

PAGE_COLUMNS = r"""  `page_id` int(10) unsigned NOT NULL AUTO_INCREMENT,
  `page_namespace` int(11) NOT NULL DEFAULT 0,
  `page_title` varbinary(255) NOT NULL DEFAULT '',
  `page_is_redirect` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `page_is_new` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `page_random` double unsigned NOT NULL DEFAULT 0,
  `page_touched` binary(14) NOT NULL,
  `page_links_updated` varbinary(14) DEFAULT NULL,
  `page_latest` int(10) unsigned NOT NULL DEFAULT 0,
  `page_len` int(10) unsigned NOT NULL DEFAULT 0,
  `page_content_model` varbinary(32) DEFAULT NULL,
  `page_lang` varbinary(35) DEFAULT NULL,
  PRIMARY KEY (`page_id`),
  UNIQUE KEY `page_name_title` (`page_namespace`,`page_title`),
  KEY `page_random` (`page_random`)"""
PAGELINKS_COLUMNS = """  `pl_from` int(10) unsigned NOT NULL DEFAULT 0,
  `pl_from_namespace` int(11) NOT NULL DEFAULT 0,
  `pl_target_id` bigint(20) unsigned NOT NULL,
  PRIMARY KEY (`pl_from`,`pl_target_id`),
  KEY `pl_target_id` (`pl_target_id`,`pl_from`)"""
OLD_PAGELINKS_COLUMNS = """  `pl_from` int(8) unsigned NOT NULL DEFAULT 0,
  `pl_namespace` int(11) NOT NULL DEFAULT 0,
  `pl_title` varbinary(255) NOT NULL DEFAULT '',
  `pl_from_namespace` int(11) NOT NULL DEFAULT 0,
  UNIQUE KEY `pl_from` (`pl_from`,`pl_namespace`,`pl_title`)"""
LINKTARGET_COLUMNS = """  `lt_id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `lt_namespace` int(11) NOT NULL,
  `lt_title` varbinary(255) NOT NULL,
  PRIMARY KEY (`lt_id`)"""
REDIRECT_COLUMNS = """  `rd_from` int(8) unsigned NOT NULL DEFAULT 0,
  `rd_namespace` int(11) NOT NULL DEFAULT 0,
  `rd_title` varbinary(255) NOT NULL DEFAULT '',
  `rd_interwiki` varbinary(32) DEFAULT NULL,
  `rd_fragment` varbinary(255) DEFAULT NULL,
  PRIMARY KEY (`rd_from`)"""
PAGE_PROPS_COLUMNS = """  `pp_page` int(10) unsigned NOT NULL,
  `pp_propname` varbinary(60) NOT NULL,
  `pp_value` blob NOT NULL,
  `pp_sortkey` float DEFAULT NULL,
  PRIMARY KEY (`pp_page`,`pp_propname`)"""


def dump_text(table: str, columns: str, inserts: list[str]) -> str:
    """A mysqldump file: ``inserts`` are the tuple lists of successive INSERT lines."""
    lines = [
        "-- MySQL dump 10.19  Distrib 10.3.39-MariaDB, for debian-linux-gnu (x86_64)",
        "--",
        "-- Host: db1234    Database: enwiki",
        "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;",
        "",
        f"DROP TABLE IF EXISTS `{table}`;",
        "/*!40101 SET @saved_cs_client     = @@character_set_client */;",
        f"CREATE TABLE `{table}` (",
        columns,
        ") ENGINE=InnoDB DEFAULT CHARSET=binary ROW_FORMAT=COMPRESSED;",
        "/*!40101 SET character_set_client = @saved_cs_client */;",
        "",
        f"LOCK TABLES `{table}` WRITE;",
        f"/*!40000 ALTER TABLE `{table}` DISABLE KEYS */;",
        *(f"INSERT INTO `{table}` VALUES {values};" for values in inserts),
        f"/*!40000 ALTER TABLE `{table}` ENABLE KEYS */;",
        "UNLOCK TABLES;",
        "",
        "-- Dump completed on 2024-07-01  0:12:34",
    ]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str | bytes) -> Path:
    data = text.encode() if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".bz2":
        data = bz2.compress(data, compresslevel=1)  # 100 kB blocks
    path.write_bytes(data)
    return path


def read_all(path: Path, **kwargs) -> pa.Table:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DumpTruncatedWarning for complete dumps
        return pa.Table.from_batches(list(read_sql_dump(path, **kwargs)))


PAGE_ROWS = [
    r"(10,0,'AccessibleComputing',1,0,0.856935107283,'20240620191500','20240620191500',"
    r"1219062925,111,'wikitext',NULL),(12,0,'Anarchism',0,0,0.786172332974311,"
    r"'20240701061239','20240701061249',1231877000,110912,'wikitext',NULL)",
    r"(13,0,'O\'Brien_(surname)',0,1,0.123456789,'20240701061239',NULL,5,-7,NULL,'de'),"
    r"(14,4,'C:\\path',0,0,1e-05,'20240701061239','20240701061249',6,0,'wikitext',NULL),"
    r"(15,0,'Zürich',1,0,0,'20240701061239','20240701061249',7,42,'wikitext','')",
]


@pytest.mark.parametrize("suffix", [".sql", ".sql.gz", ".sql.bz2"])
def test_page_values_types_and_escapes(tmp_path, suffix):
    path = write(tmp_path / f"page{suffix}", dump_text("page", PAGE_COLUMNS, PAGE_ROWS))
    table = read_all(path)
    assert table.schema.names == [
        "page_id", "page_namespace", "page_title", "page_is_redirect", "page_is_new",
        "page_random", "page_touched", "page_links_updated", "page_latest", "page_len",
        "page_content_model", "page_lang",
    ]  # fmt: skip
    assert table.schema.field("page_id").type == pa.int64()
    assert table.schema.field("page_random").type == pa.float64()
    assert table.schema.field("page_title").type == pa.string()
    assert table.column("page_id").to_pylist() == [10, 12, 13, 14, 15]
    assert table.column("page_title").to_pylist() == [
        "AccessibleComputing", "Anarchism", "O'Brien_(surname)", "C:\\path", "Zürich",
    ]  # fmt: skip
    assert table.column("page_random").to_pylist() == [
        0.856935107283, 0.786172332974311, 0.123456789, 1e-05, 0.0,
    ]  # fmt: skip
    assert table.column("page_len").to_pylist() == [111, 110912, -7, 0, 42]
    assert table.column("page_links_updated").to_pylist()[2] is None
    assert table.column("page_content_model").to_pylist() == [
        "wikitext", "wikitext", None, "wikitext", "wikitext",
    ]  # fmt: skip
    assert table.column("page_lang").to_pylist() == [None, None, "de", None, ""]

    page = read_page(path)
    assert page.schema.names == ["page_id", "namespace", "title", "is_redirect"]
    assert page.to_pylist()[2] == {
        "page_id": 13, "namespace": 0, "title": "O'Brien (surname)", "is_redirect": False,
    }  # fmt: skip
    assert page.column("is_redirect").to_pylist() == [True, False, False, False, True]
    assert read_page(path, namespaces=[4]).column("title").to_pylist() == ["C:\\path"]


def test_columns_subset_in_requested_order(tmp_path):
    path = write(tmp_path / "page.sql", dump_text("page", PAGE_COLUMNS, PAGE_ROWS))
    table = read_all(path, columns=["page_lang", "page_id"])
    assert table.schema.names == ["page_lang", "page_id"]
    assert table.column("page_id").to_pylist() == [10, 12, 13, 14, 15]
    assert table.column("page_lang").to_pylist() == [None, None, "de", None, ""]


def test_every_mysql_escape_and_separators_inside_strings(tmp_path):
    titles = [
        (r"'a\0b\nc\rd\Ze\tf\bg'", "a\0b\nc\rd\x1ae\tf\bg"),
        (r"'\"quoted\" \'single\''", "\"quoted\" 'single'"),
        (r"'back\\slash\\n\\'", "back\\slash\\n\\"),  # escaped backslash before n: no newline
        (r"'Foo_(bar),(baz)'", "Foo_(bar),(baz)"),  # looks like a tuple separator
        (r"'x),(1,0,\'y\'),(z'", "x),(1,0,'y'),(z"),
        (r"'NULL'", "NULL"),  # a string, not a null
        (r"''", ""),
        (r"'100\%_\_'", "100\\%_\\_"),  # MySQL keeps the backslash of \% and \_
    ]
    rows = ",".join(f"({i},0,{sql})" for i, (sql, _) in enumerate(titles, 1))
    path = write(tmp_path / "lt.sql", dump_text("linktarget", LINKTARGET_COLUMNS, [rows]))
    table = read_all(path)
    assert table.column("lt_title").to_pylist() == [value for _, value in titles]
    assert table.column("lt_id").to_pylist() == list(range(1, len(titles) + 1))


def mysql_escape(value: str) -> str:
    """How mysqldump writes a string (mysql_real_escape_string), for the round-trip test."""
    table = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\0": "\\0", "\n": "\\n", "\r": "\\r"}
    return "'" + "".join(table.get(c, "\\Z" if c == "\x1a" else c) for c in value) + "'"


def test_round_trip_random_strings(tmp_path):
    rng = random.Random(7)
    alphabet = "ab_ (),'\"\\\0\n\r\x1a\tüé中;NUL"
    values = ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(3000)]
    namespaces = [rng.randint(-5, 5) for _ in values]
    rows = [f"({i},{namespaces[i]},{mysql_escape(v)})" for i, v in enumerate(values)]
    lines = [",".join(rows[j : j + 700]) for j in range(0, len(rows), 700)]
    path = write(tmp_path / "lt.sql.gz", dump_text("linktarget", LINKTARGET_COLUMNS, lines))
    table = read_all(path, columns=["lt_title", "lt_namespace", "lt_id"], batch_rows=1000)
    assert table.column("lt_title").to_pylist() == values
    assert table.column("lt_namespace").to_pylist() == namespaces
    assert table.column("lt_id").to_pylist() == list(range(len(values)))


def test_fast_and_exact_parsers_agree(tmp_path, monkeypatch):
    """Strings with only the escapes the CSV fast path keeps (\\' and \\"), separators and
    NULL-looking text inside, nulls: the fast path alone reads them, like the exact parser."""
    rng = random.Random(11)
    pieces = ["a", "_", " ", "'", '"', "),(", ",", "(", ")", ";", "NULL", "ü", "中", "''"]
    values = ["".join(rng.choices(pieces, k=rng.randint(0, 6))) for _ in range(4000)]
    nullable = [None if rng.random() < 0.2 else v for v in reversed(values)]
    rows = [
        f"({i},{rng.randint(-2, 2)},{mysql_escape(v)},"
        f"{'NULL' if w is None else mysql_escape(w)},{mysql_escape(v[:3])})"
        for i, (v, w) in enumerate(zip(values, nullable, strict=True))
    ]
    lines = [",".join(rows[j : j + 900]) for j in range(0, len(rows), 900)]
    path = write(tmp_path / "rd.sql.gz", dump_text("redirect", REDIRECT_COLUMNS, lines))

    exact_calls = []
    parse = sql._RegexParser.parse
    monkeypatch.setattr(
        sql._RegexParser, "parse", lambda *a, **k: exact_calls.append(1) or parse(*a, **k)
    )
    fast = read_all(path, batch_rows=1500)
    assert not exact_calls
    assert fast.column("rd_title").to_pylist() == values
    assert fast.column("rd_interwiki").to_pylist() == nullable
    monkeypatch.setattr(sql._CsvParser, "parse", lambda self, *a: self.exact.parse(*a))
    exact = read_all(path, batch_rows=1500)
    assert exact_calls and exact.equals(fast)


def test_column_order_comes_from_create_table(tmp_path):
    old_page = r"""  `page_id` int(8) unsigned NOT NULL AUTO_INCREMENT,
  `page_title` varbinary(255) NOT NULL DEFAULT '',
  `page_restrictions` tinyblob NOT NULL,
  `page_counter` bigint(20) unsigned NOT NULL DEFAULT 0,
  `page_namespace` int(11) NOT NULL DEFAULT 0,
  `page_is_redirect` tinyint(1) unsigned NOT NULL DEFAULT 0,
  `page_random` double unsigned NOT NULL DEFAULT 0,
  PRIMARY KEY (`page_id`)"""
    rows = (
        r"(7,'Main_Page','edit=sysop:move=sysop',123,0,0,0.5),(8,'Help:Con\'tents','',0,12,1,0.25)"
    )
    path = write(tmp_path / "page.sql", dump_text("page", old_page, [rows]))
    assert read_page(path).to_pylist() == [
        {"page_id": 7, "namespace": 0, "title": "Main Page", "is_redirect": False},
        {"page_id": 8, "namespace": 12, "title": "Help:Con'tents", "is_redirect": True},
    ]
    assert read_sql_schema(path).names[:4] == [
        "page_id", "page_title", "page_restrictions", "page_counter",
    ]  # fmt: skip


def test_pagelinks_linktarget_schema(tmp_path):
    lines = ["(1,0,5),(1,0,9),(2,14,5)", "(3,0,123456789012),(4,-1,7)"]
    path = write(tmp_path / "pl.sql.gz", dump_text("pagelinks", PAGELINKS_COLUMNS, lines))
    assert pagelinks_schema(path) == "linktarget"
    table = pa.Table.from_batches(list(iter_pagelinks(path)))
    assert table.schema.names == ["src", "target_id", "from_namespace"]
    assert table.schema.field("from_namespace").type == pa.int32()
    assert table.to_pydict() == {
        "src": [1, 1, 2, 3, 4],
        "target_id": [5, 9, 5, 123456789012, 7],
        "from_namespace": [0, 0, 14, 0, -1],
    }


def test_pagelinks_title_schema(tmp_path):
    lines = [r"(1,0,'Anarchism',0),(1,14,'Political_philosophy',0)", r"(2,0,'O\'Neill',4)"]
    path = write(tmp_path / "pl.sql", dump_text("pagelinks", OLD_PAGELINKS_COLUMNS, lines))
    assert pagelinks_schema(path) == "title"
    table = pa.Table.from_batches(list(iter_pagelinks(path, batch_rows=2)))
    assert table.schema.names == ["src", "namespace", "title", "from_namespace"]
    assert table.to_pydict() == {
        "src": [1, 1, 2],
        "namespace": [0, 14, 0],
        "title": ["Anarchism", "Political philosophy", "O'Neill"],
        "from_namespace": [0, 0, 4],
    }


def test_pagelinks_schema_rejects_other_tables(tmp_path):
    path = write(tmp_path / "lt.sql", dump_text("linktarget", LINKTARGET_COLUMNS, ["(1,0,'A')"]))
    with pytest.raises(ValueError, match="not a pagelinks dump"):
        pagelinks_schema(path)


def test_numeric_table_nulls_negatives_floats(tmp_path):
    columns = """  `a` int(11) DEFAULT NULL,
  `b` double NOT NULL,
  `c` decimal(10,3) DEFAULT NULL,
  `d` bigint(20) NOT NULL"""
    lines = ["(1,0.5,NULL,-9223372036854775807),(NULL,-1.25e3,2.500,0)", "(-3,.5,-0.001,42)"]
    path = write(tmp_path / "t.sql", dump_text("t", columns, lines))
    table = read_all(path)
    assert table.to_pydict() == {
        "a": [1, None, -3],
        "b": [0.5, -1250.0, 0.5],
        "c": [None, 2.5, -0.001],
        "d": [-9223372036854775807, 0, 42],
    }
    assert not table.schema.field("d").nullable and table.schema.field("a").nullable


def test_linktarget_and_redirect(tmp_path):
    lt = write(
        tmp_path / "lt.sql.gz",
        dump_text("linktarget", LINKTARGET_COLUMNS, [r"(1,0,'Zürich'),(2,14,'Living_people')"]),
    )
    assert read_linktarget(lt).to_pydict() == {
        "target_id": [1, 2], "namespace": [0, 14], "title": ["Zürich", "Living people"],
    }  # fmt: skip
    assert read_linktarget(lt, namespaces={14}).column("target_id").to_pylist() == [2]
    rows = (
        r"(10,0,'Computer_accessibility','',''),"
        r"(13,0,'History_of_Afghanistan',NULL,'Early_life'),(99,0,'Foo','en',NULL)"
    )
    rd = write(tmp_path / "rd.sql", dump_text("redirect", REDIRECT_COLUMNS, [rows]))
    assert read_redirect(rd).to_pydict() == {
        "page_id": [10, 13, 99],
        "namespace": [0, 0, 0],
        "title": ["Computer accessibility", "History of Afghanistan", "Foo"],
        "interwiki": ["", None, "en"],
        "fragment": ["", "Early_life", None],
    }


def test_page_props_disambiguation(tmp_path):
    lines = [
        r"(5,'disambiguation','',NULL),(5,'wikibase_item','Q1',NULL),"
        r"(7,'defaultsort','O\'Hara,\nX',NULL)",
        r"(9,'disambiguation','',NULL),(11,'page_image_free','A.jpg',0.5),"
        r"(12,'wikibase_item','Q2',12)",
    ]
    path = write(tmp_path / "pp.sql.gz", dump_text("page_props", PAGE_PROPS_COLUMNS, lines))
    assert read_page_props(path).column("page_id").to_pylist() == [5, 9]
    assert read_page_props(path, "wikibase_item").column("page_id").to_pylist() == [5, 12]
    table = read_all(path)
    assert table.column("pp_value").to_pylist()[2] == "O'Hara,\nX"
    assert table.column("pp_sortkey").to_pylist() == [None, None, None, None, 0.5, 12.0]


def test_unknown_and_duplicate_columns_raise_before_reading(tmp_path):
    path = write(tmp_path / "lt.sql", dump_text("linktarget", LINKTARGET_COLUMNS, ["(1,0,'A')"]))
    with pytest.raises(ValueError, match=r"unknown: \['lt_name'\]") as info:
        read_sql_dump(path, columns=["lt_id", "lt_name"])
    assert "lt_namespace" in str(info.value) and "lt_title" in str(info.value)
    with pytest.raises(ValueError, match="distinct"):
        read_sql_dump(path, columns=["lt_id", "lt_id"])
    with pytest.raises(ValueError, match="batch_rows"):
        read_sql_dump(path, batch_rows=0)


def test_bad_or_missing_create_table_raises(tmp_path):
    path = write(tmp_path / "x.sql", "-- nothing here\nINSERT INTO `t` VALUES (1);\n")
    with pytest.raises(ValueError, match="INSERT before any CREATE TABLE"):
        read_sql_dump(path)
    path = write(tmp_path / "y.sql", "-- nothing here\n")
    with pytest.raises(ValueError, match="no CREATE TABLE"):
        read_sql_dump(path)
    text = dump_text("t", "  `shape` geometry NOT NULL,\n  `id` int(11) NOT NULL", ["(1)"])
    with pytest.raises(ValueError, match=r"line 9: `shape`: unknown type geometry"):
        read_sql_dump(write(tmp_path / "z.sql.gz", text))
    cut = dump_text("linktarget", LINKTARGET_COLUMNS, ["(1,0,'A')"]).encode()
    path = tmp_path / "cut.sql.gz"
    path.write_bytes(gzip.compress(cut)[:300])
    with pytest.raises(ValueError, match=r"ends inside CREATE TABLE `linktarget` .*cut off"):
        read_sql_dump(path)


def big_dump(table: str, n: int, per_line: int) -> tuple[str, list]:
    """``n`` rows of pagelinks (linktarget layout) or linktarget, and the expected values."""
    rng = random.Random(n)
    if table == "pagelinks":
        rows = [(i // 3, 0, rng.randint(1, 10**9)) for i in range(n)]
        render, columns = (lambda r: f"({r[0]},{r[1]},{r[2]})"), PAGELINKS_COLUMNS
    else:
        rows = [(i, i % 7, f"T{rng.randint(0, 10**6)}_O'x") for i in range(n)]
        render, columns = (lambda r: f"({r[0]},{r[1]},{mysql_escape(r[2])})"), LINKTARGET_COLUMNS
    lines = [",".join(map(render, rows[i : i + per_line])) for i in range(0, n, per_line)]
    return dump_text(table, columns, lines), rows


@pytest.mark.parametrize("table", ["pagelinks", "linktarget"])
@pytest.mark.parametrize("suffix", [".sql.gz", ".sql.bz2"])
def test_cut_compressed_stream_keeps_complete_rows(tmp_path, table, suffix):
    text, rows = big_dump(table, 30_000, 1000)
    full = write(tmp_path / f"full{suffix}", text).read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(full[: len(full) * 6 // 10])
    with pytest.warns(DumpTruncatedWarning, match=r"cut\.sql.* ends early .*stream is cut off"):
        got = pa.Table.from_batches(list(read_sql_dump(path, batch_rows=4096)))
    assert 0 < got.num_rows < len(rows)
    assert [tuple(r.values()) for r in got.to_pylist()] == rows[: got.num_rows]


@pytest.mark.parametrize(
    ("tail", "kept"),
    [
        ("(5,0,'Fo", 4),  # inside a string
        ("(5,0,'a)b", 4),  # a ')' inside the cut string
        ("(5,0,'O\\'", 4),  # right after an escape
        ("(5,", 4),
        ("(5,0,'Foo'),", 5),  # after a complete tuple
        ("(5,0,'Foo')", 5),  # only the ';' is missing
    ],
)
def test_cut_last_insert_line_keeps_complete_tuples(tmp_path, tail, kept):
    text = dump_text("linktarget", LINKTARGET_COLUMNS, ["(1,0,'A'),(2,0,'B')"])
    text = text[: text.index("/*!40000 ALTER TABLE `linktarget` ENABLE")]
    path = write(
        tmp_path / "lt.sql", text + "INSERT INTO `linktarget` VALUES (3,1,'C'),(4,1,'D')," + tail
    )
    with pytest.warns(DumpTruncatedWarning, match=rf"INSERT line 19 is cut off.*kept the {kept} "):
        table = pa.Table.from_batches(list(read_sql_dump(path)))
    assert table.column("lt_id").to_pylist() == [1, 2, 3, 4, 5][:kept]


def test_cut_numeric_line_keeps_complete_tuples(tmp_path):
    text = dump_text("pagelinks", PAGELINKS_COLUMNS, ["(1,0,5),(1,0,9)"])
    text = text[: text.index("/*!40000 ALTER TABLE `pagelinks` ENABLE")]
    path = write(tmp_path / "pl.sql", text + "INSERT INTO `pagelinks` VALUES (2,0,7),(2,0,12")
    with pytest.warns(DumpTruncatedWarning, match="kept the 3 complete rows"):
        table = pa.Table.from_batches(list(read_sql_dump(path)))
    assert table.column("pl_target_id").to_pylist() == [5, 9, 7]


@pytest.mark.parametrize(
    ("table", "columns", "bad"),
    [
        ("linktarget", LINKTARGET_COLUMNS, "(3,0,'C',1)"),  # one value too many
        ("linktarget", LINKTARGET_COLUMNS, "(3,0,C)"),  # unquoted string
        ("linktarget", LINKTARGET_COLUMNS, "(3,NULL,'C')"),  # NULL in a NOT NULL column
        ("linktarget", LINKTARGET_COLUMNS, "(3,'0','C')"),  # quoted number
        ("linktarget", LINKTARGET_COLUMNS, "(3,0,'C'x)"),
        ("pagelinks", PAGELINKS_COLUMNS, "(3,0,x)"),
        ("pagelinks", PAGELINKS_COLUMNS, "(3,0)"),
        ("pagelinks", PAGELINKS_COLUMNS, "(3,0,99999999999999999999)"),  # beyond int64
    ],
)
def test_malformed_row_raises_with_file_and_line(tmp_path, table, columns, bad):
    good = "(1,0,'A'),(2,0,'B')" if table == "linktarget" else "(1,0,5),(2,0,6)"
    text = dump_text(table, columns, [good, f"{good},{bad}", good])
    lineno = text.splitlines().index(f"INSERT INTO `{table}` VALUES {good},{bad};") + 1
    path = write(tmp_path / "bad.sql", text)
    with pytest.raises(ValueError, match=rf"bad\.sql: line {lineno}\b"):
        list(read_sql_dump(path))


def test_unterminated_insert_line_mid_file_raises(tmp_path):
    text = dump_text("linktarget", LINKTARGET_COLUMNS, ["(1,0,'A')", "(2,0,'B')"])
    path = write(tmp_path / "bad.sql", text.replace("(1,0,'A');", "(1,0,'A')"))
    lineno = text.splitlines().index("INSERT INTO `linktarget` VALUES (1,0,'A');") + 1
    with pytest.raises(ValueError, match=rf"line {lineno}: INSERT does not end with"):
        list(read_sql_dump(path))


@pytest.mark.parametrize("table", ["pagelinks", "linktarget"])
def test_batches_have_exactly_batch_rows(tmp_path, table):
    text, rows = big_dump(table, 2500, 300)
    path = write(tmp_path / "t.sql.gz", text)
    batches = list(read_sql_dump(path, batch_rows=1000))
    assert [b.num_rows for b in batches] == [1000, 1000, 500]
    got = pa.Table.from_batches(batches).to_pylist()
    assert [tuple(r.values()) for r in got] == rows
    one = list(read_sql_dump(path, batch_rows=10**6))
    assert len(one) == 1 and one[0].equals(
        pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
    )


def test_tiny_chunks_and_csv_groups_give_the_same_rows(tmp_path, monkeypatch):
    """Lines spanning many decompressed chunks, chunks holding many lines, many CSV groups."""
    text, rows = big_dump("linktarget", 3000, 400)
    path = write(tmp_path / "lt.sql.gz", text)
    expected = read_all(path)
    monkeypatch.setattr(sql, "_CHUNK", 7)
    monkeypatch.setattr(sql, "_CSV_GROUP", 5000)
    got = read_all(path, batch_rows=999)
    assert got.equals(expected)
    assert [tuple(r.values()) for r in got.to_pylist()] == rows


def test_invalid_utf8_is_replaced(tmp_path):
    text = dump_text("linktarget", LINKTARGET_COLUMNS, ["(1,0,'ok'),(2,0,'bad@'),(3,0,'Zürich')"])
    path = write(tmp_path / "lt.sql", text.encode().replace(b"bad@", b"bad\xff\xfe"))
    assert read_all(path).column("lt_title").to_pylist() == ["ok", "bad\ufffd\ufffd", "Zürich"]


def test_concatenated_gzip_members_and_crlf(tmp_path):
    text = dump_text("pagelinks", PAGELINKS_COLUMNS, ["(1,0,5),(1,0,9)", "(2,0,7)"])
    half = text.index("INSERT INTO `pagelinks` VALUES (2")
    path = tmp_path / "pl.sql.gz"
    path.write_bytes(gzip.compress(text[:half].encode()) + gzip.compress(text[half:].encode()))
    assert read_all(path).column("pl_target_id").to_pylist() == [5, 9, 7]
    crlf = write(tmp_path / "crlf.sql", text.replace("\n", "\r\n"))
    assert read_all(crlf, progress=True).column("pl_target_id").to_pylist() == [5, 9, 7]
