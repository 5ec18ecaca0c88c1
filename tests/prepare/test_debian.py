"""The Debian synopses data set (plad.prepare.debian): deb822 parsing, description text, every filter, one binary
per source, the family cap, the salted split, and the apt plumbing around it (a fake apt-get on PATH)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import random
import shutil
import sys
from pathlib import Path

import pytest

from plad.prepare import debian
from plad.prepare.debian import DebianError, DebianOptions, description_text, extract, parse_deb822
from plad.utils.errors import DataError

# 10 words: a body of `filler(n)` words is in or out of the word limits by hand
WORDS = "this package provides tools that help users manage their files daily and more".split()


def filler(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def pkg(name: str, source: str = "", section: str = "utils") -> str:
    """A `Packages` paragraph."""
    lines = [f"Package: {name}"] + ([f"Source: {source}"] if source else [])
    lines += ["Version: 1.0-1", "Architecture: amd64", f"Section: {section}", "Description: ignored here"]
    return "\n".join(lines) + "\n"


def trans(name: str, synopsis: str, body: str) -> str:
    """A `Translation-en` paragraph: the synopsis on the Description-en line, the body wrapped as continuation lines."""
    words = body.split()
    lines = [" " + " ".join(words[i : i + 6]) for i in range(0, len(words), 6)]
    return (
        f"Package: {name}\nDescription-md5: {hashlib.md5(name.encode()).hexdigest()}\nDescription-en: {synopsis}\n"
        + "\n".join(lines)
        + "\n"
    )


def lists(entries: list[tuple]) -> tuple[list[str], list[str]]:
    """(Packages texts, Translation-en texts) of entries (name, source, synopsis, body); source '' = own name."""
    packages = "\n".join(pkg(name, source) for name, source, _, _ in entries)
    translations = "\n".join(trans(name, syn, body) for name, _, syn, body in entries)
    return [packages], [translations]


def ok(name: str, source: str = "", synopsis: str = "file manager for the console") -> tuple:
    return (name, source, synopsis, filler(12))


# the fixtures' descriptions are one filler text: near-duplicate dropping has its own test
OPTS = DebianOptions(
    min_words=8, max_words=20, min_synopsis_words=2, max_synopsis_words=6, family_cap=2, n_test=1, n_val=1,
    salt="test", drop_near_duplicates=False,
)  # fmt: skip


def all_rows(splits: dict[str, list[dict]]) -> dict[str, dict]:
    return {r["id"]: r for rows in splits.values() for r in rows}


def hash_order(sources: list[str], salt: str) -> list[str]:
    return sorted(sources, key=lambda s: hashlib.sha256(f"{salt}:{s}".encode()).hexdigest())


# --------------------------------------------------------------------------------------------------------------
# Parsing


def test_parse_deb822_fields_and_continuation_lines():
    text = (
        "Package: foo\nSource: foo-src (1.2-3)\nDescription-en: a tool: for things\n line one\n .\n  verbatim\n"
        "\n\n"
        "Package: bar\nVersion: 2\n"
    )
    assert list(parse_deb822(text)) == [
        {
            "Package": "foo",
            "Source": "foo-src (1.2-3)",
            "Description-en": "a tool: for things\n line one\n .\n  verbatim",
        },
        {"Package": "bar", "Version": "2"},
    ]


def test_description_text_by_hand():
    long = (
        " First paragraph wraps\n over two lines.\n .\n Second paragraph:\n  verbatim one\n  verbatim two\n"
        " back to text\n and more.\n ."
    )
    assert description_text(long) == (
        "First paragraph wraps over two lines.\n\nSecond paragraph:\nverbatim one\nverbatim two\nback to text and more."
    )
    assert description_text("") == ""
    assert description_text(" .\n one\n .\n .\n two") == "one\n\ntwo"  # empty paragraphs vanish


# --------------------------------------------------------------------------------------------------------------
# Filters, one binary per source, family cap


def test_every_filter():
    entries = [
        ok("keep-a"), ok("keep-b"), ok("keep-c"), ok("keep-d"),
        ("old-tool", "", "transitional package for new-tool", filler(12)),
        ("fake-mta", "", "Dummy package for the mail system", filler(12)),
        ("desk", "", "metapackage for the desk desktop", filler(12)),
        ("desk2", "", "meta package for the desk2 desktop", filler(12)),
        ("desk3", "", "meta-package for the desk3 desktop", filler(12)),
        ("quiet-old", "", "old name of a tool", "This is a transitional package. " + filler(10)),
        ("x-doc", "", "documentation of x", filler(12)),
        ("x-dev", "", "headers of x", filler(12)),
        ("x-dbg", "", "debugging symbols of x", filler(12)),
        ("x-data", "", "data files of x", filler(12)),
        ("x-common", "", "common files of x", filler(12)),
        ("x-prof", "", "profiling libraries of x", filler(12)),
        ("body-8", "", "smallest body kept", filler(8)),
        ("body-7", "", "body one word short", filler(7)),
        ("body-20", "", "largest body kept", filler(20)),
        ("body-21", "", "body one word long", filler(21)),
        ("syn-2", "", "two words", filler(12)),
        ("syn-1", "", "one", filler(12)),
        ("syn-6", "", "a synopsis of exactly six words", filler(12)),
        ("syn-7", "", "a synopsis of exactly seven words here", filler(12)),
    ]  # fmt: skip
    packages, translations = lists(entries)
    packages[0] += "\n" + pkg("no-translation")  # a binary without English text
    translations[0] += "\n" + trans("no-package", "not in the Packages file", filler(12))
    kept = set(all_rows(extract(packages, translations, OPTS)))
    assert kept == {"keep-a", "keep-b", "keep-c", "keep-d", "body-8", "body-20", "syn-2", "syn-6"}


def test_one_binary_per_source():
    entries = [
        ok("foo-utils", "foo"), ok("foo", "foo (1.2-3)"), ok("libfoo1", "foo (1.2-3)"),  # named like its source
        ok("bar-tools", "bar (2.0)"), ok("bary", "bar"), ok("barx", "bar"),  # shortest, then alphabetical
        ok("baz-doc", "baz"), ("baz", "baz", "transitional package for baz-cli", filler(12)),
        ok("python3-baz", "baz"), ok("baz-cli", "baz"),  # the filters come first: baz-cli, not baz
        ok("solo"), ok("other"),  # no Source field: its own source
    ]  # fmt: skip
    rows = all_rows(extract(*lists(entries), OPTS))
    assert set(rows) == {"foo", "barx", "baz-cli", "solo", "other"}
    assert {k: r["meta"]["source"] for k, r in rows.items()} == {
        "foo": "foo", "barx": "bar", "baz-cli": "baz", "solo": "solo", "other": "other",
    }  # fmt: skip


def test_family_cap_keeps_the_first_of_each_family_in_hash_order():
    rcran = [f"r-cran-pkg{i}" for i in range(6)]
    perl = [f"libthing{i}-perl" for i in range(3)]
    plain = [f"tool{i}" for i in range(4)]
    rows = all_rows(extract(*lists([ok(n) for n in rcran + perl + plain]), OPTS))  # family_cap = 2
    assert {k for k in rows if k.startswith("r-cran-")} == set(hash_order(rcran, OPTS.salt)[:2])
    assert {k for k in rows if k.endswith("-perl")} == set(hash_order(perl, OPTS.salt)[:2])
    assert {k for k in rows if k.startswith("tool")} == set(plain)  # each its own family: no cap
    assert {rows[k]["meta"]["family"] for k in rows} == {"r-cran", "perl", *plain}


def test_row_format():
    packages = [pkg("lister", "lister-src (3)", section="admin")]
    translations = [
        "Package: lister\nDescription-en: list files quickly\n Shows the files.\n .\n It is fast.\n"
    ]
    for extra in ("a", "b", "c"):  # more packages, so that the split has room
        packages.append(pkg(extra))
        translations.append(trans(extra, "another small tool", filler(12)))
    rows = all_rows(extract(packages, translations, dataclasses.replace(OPTS, min_words=1)))
    text = "Shows the files.\n\nIt is fast."
    assert rows["lister"] == {
        "id": "lister",
        "prompt": [
            {"role": "system", "content": "Write the one-line synopsis of a Debian package."},
            {"role": "user", "content": f"Package: lister\n\n{text}"},
        ],
        "target": "list files quickly",
        "meta": {"source": "lister-src", "section": "admin", "family": "lister"},
        "text": text,
    }


# --------------------------------------------------------------------------------------------------------------
# The split


def many(n: int) -> list[tuple]:
    """n sources, some with two binaries (the second one is dropped by the one-per-source rule)."""
    out = []
    for i in range(n):
        out.append(ok(f"prog{i}"))
        if i % 3 == 0:
            out.append(ok(f"prog{i}-extra", f"prog{i}"))
    return out


def test_split_is_deterministic_salted_and_keeps_sources_apart():
    opts = dataclasses.replace(OPTS, n_test=5, n_val=4)
    entries = many(40)
    splits = extract(*lists(entries), opts)
    sizes = {s: len(v) for s, v in splits.items()}
    assert sizes["test"] == 5 and sizes["val"] == 4 and sizes["train"] + sizes["unlabeled"] == 31
    assert sizes["train"] > 0 and sizes["unlabeled"] > 0
    # test and val are the first sources in salted-hash order, and every file is in that order (its first N rows
    # are a random sample of it); train / unlabeled by a second hash
    order = hash_order([f"prog{i}" for i in range(40)], opts.salt)
    assert [r["id"] for r in splits["test"]] == order[:5]
    assert [r["id"] for r in splits["val"]] == order[5:9]
    for split in ("train", "unlabeled"):
        assert [r["id"] for r in splits[split]] == [
            p for p in order[9:] if p in {r["id"] for r in splits[split]}
        ]
    assert all("target" not in r for r in splits["unlabeled"])  # no label in the unlabeled split
    sources = [r["meta"]["source"] for rows in splits.values() for r in rows]
    assert len(sources) == len(set(sources)) == 40  # no source in two splits, none lost
    # the same input in another order: the same splits; another salt: other splits
    shuffled = entries[:]
    random.Random(0).shuffle(shuffled)
    assert extract(*lists(shuffled), opts) == splits
    other = extract(*lists(entries), dataclasses.replace(opts, salt="another salt"))
    assert {s: [r["id"] for r in v] for s, v in other.items()} != {
        s: [r["id"] for r in v] for s, v in splits.items()
    }


def test_too_few_packages_is_a_data_error():
    with pytest.raises(DataError, match="only 3 packages pass the filters"):
        extract(*lists(many(3)), dataclasses.replace(OPTS, n_test=2, n_val=1))


# --------------------------------------------------------------------------------------------------------------
# The archive lists: apt-get (a fake one on PATH), list files, reading them


PKG_LIST = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
TRANS_LIST = "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en"
IN_RELEASE = "deb.debian.org_debian_dists_bookworm_InRelease"

FAKE_APT = """#!{python}
import sys
from pathlib import Path
args = sys.argv[1:]
Path({log!r}).write_text("\\n".join(args))
opts = dict(a.split("=", 1) for a in args if "=" in a)
if {fail!r}:
    print("Err:1 http://deb.debian.org/debian bookworm InRelease\\n  Could not resolve 'deb.debian.org'")
    sys.exit(100)
lists = Path(opts["Dir::State::Lists"])
src = Path({src!r})
for f in src.iterdir():
    (lists / f.name).write_bytes(f.read_bytes())
"""


def fake_apt(tmp_path: Path, monkeypatch, fail: bool = False) -> Path:
    """An `apt-get` on PATH that copies prepared list files into Dir::State::Lists (and logs its arguments)."""
    src = tmp_path / "mirror"
    src.mkdir()
    packages, translations = lists(many(8))
    (src / PKG_LIST).write_text(packages[0])
    (src / (TRANS_LIST + ".gz")).write_bytes(gzip.compress(translations[0].encode()))
    (src / IN_RELEASE).write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nOrigin: Debian\nSuite: stable\nVersion: 12.5\nCodename: bookworm\n"
        "Date: Sat, 10 Feb 2024 10:00:00 UTC\nDescription: Debian 12.5 Released 10 February 2024\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt-args.txt"
    script = bin_dir / "apt-get"
    script.write_text(FAKE_APT.format(python=sys.executable, log=str(log), fail=fail, src=str(src)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return log


@pytest.mark.skipif(not Path("/usr/lib/apt/apt-helper").exists(), reason="apt-helper reads compressed lists")
def test_fetch_read_and_extract_through_apt(tmp_path, monkeypatch):
    log = fake_apt(tmp_path, monkeypatch)
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n")
    dest = tmp_path / "apt"
    debian.fetch_lists(dest, sources)
    args = log.read_text().splitlines()
    assert args[:2] == ["update", "-q"]
    assert f"Dir::State::Lists={dest / 'lists'}" in args and "Acquire::Languages=en" in args
    assert "Dir::Etc::sourcelist=/dev/null" in args  # the system's own sources are not used
    assert (dest / "sources.d" / "debian.sources").read_text() == sources.read_text()
    pkgs, trans_files = debian.list_files(dest / "lists", "bookworm")
    assert [p.name for p in pkgs] == [PKG_LIST] and [p.name for p in trans_files] == [TRANS_LIST + ".gz"]
    splits = extract([debian.read_list(p) for p in pkgs], [debian.read_list(p) for p in trans_files], OPTS)
    assert len(all_rows(splits)) == 8
    assert debian.release_info(dest / "lists", "bookworm") == {
        "origin": "Debian", "suite": "stable", "version": "12.5", "codename": "bookworm",
        "date": "Sat, 10 Feb 2024 10:00:00 UTC",
    }  # fmt: skip
    assert debian.release_info(dest / "lists", "trixie") == {}


def test_apt_get_failing_or_missing(tmp_path, monkeypatch):
    fake_apt(tmp_path, monkeypatch, fail=True)
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\n")
    with pytest.raises(DebianError, match="could not fetch the Debian lists.*Could not resolve"):
        debian.fetch_lists(tmp_path / "apt", sources)
    with pytest.raises(DebianError, match="no-such.sources does not exist.*prepare.apt_sources"):
        debian.check_apt(tmp_path / "no-such.sources")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DebianError, match="apt-get is not installed.*prepare.data_dir"):
        debian.fetch_lists(tmp_path / "apt", sources)


def test_list_files_of_the_suite_only(tmp_path):
    with pytest.raises(
        DebianError, match="no Packages or Translation-en files of suite 'bookworm'.*prepare.suite"
    ):
        debian.list_files(tmp_path, "bookworm")
    for name in (
        PKG_LIST + ".lz4", TRANS_LIST + ".lz4",
        "deb.debian.org_debian_dists_bookworm-updates_main_binary-amd64_Packages.lz4",
        "deb.debian.org_debian_dists_bookworm_contrib_binary-amd64_Packages.lz4",
        "deb.debian.org_debian_dists_bookworm-updates_main_i18n_Translation-en",
    ):  # fmt: skip
        (tmp_path / name).write_text("")
    pkgs, trans_files = debian.list_files(tmp_path, "bookworm")
    assert [p.name for p in pkgs] == [PKG_LIST + ".lz4"] and [p.name for p in trans_files] == [
        TRANS_LIST + ".lz4"
    ]


def test_read_list_reads_a_plain_list_itself(tmp_path, monkeypatch):
    """An uncompressed list has dots in its name (the mirror's host): it is read directly, without apt-helper."""
    path = tmp_path / PKG_LIST
    path.write_text("Package: a\n")

    def no_subprocess(*args, **kwargs):
        raise AssertionError("apt-helper called for a plain file")

    monkeypatch.setattr(debian.subprocess, "run", no_subprocess)
    assert debian.read_list(path) == "Package: a\n"


@pytest.mark.skipif(
    shutil.which("apt-get") is None or not Path("/usr/lib/apt/apt-helper").exists(), reason="needs apt"
)
def test_fetch_lists_with_the_real_apt_from_a_local_mirror(tmp_path, monkeypatch):
    """The real apt-get on a file: mirror (offline), with a relative destination: the lists land in it (apt reads
    relative Dir::* paths against its own folders), stored as apt likes (often .lz4), read back through apt-helper."""
    dists = tmp_path / "mirror" / "dists" / "bookworm"
    packages, translations = lists(many(8))
    files = {"main/binary-amd64/Packages": packages[0], "main/i18n/Translation-en": translations[0]}
    sums = []
    for name, text in files.items():
        (dists / name).parent.mkdir(parents=True, exist_ok=True)
        (dists / name).write_text(text)
        sums.append(f" {hashlib.sha256(text.encode()).hexdigest()} {len(text.encode())} {name}")
    (dists / "Release").write_text(
        "Origin: Test\nSuite: stable\nVersion: 12.5\nCodename: bookworm\nDate: Sat, 10 Feb 2024 10:00:00 UTC\n"
        "Architectures: amd64\nComponents: main\nSHA256:\n" + "\n".join(sums) + "\n"
    )
    sources = tmp_path / "local.sources"
    sources.write_text(
        f"Types: deb\nURIs: file:{tmp_path / 'mirror'}\nSuites: bookworm\nComponents: main\nTrusted: yes\n"
    )
    monkeypatch.chdir(tmp_path)
    debian.fetch_lists(Path("apt"), sources)
    pkgs, trans_files = debian.list_files(tmp_path / "apt" / "lists", "bookworm")
    splits = extract([debian.read_list(p) for p in pkgs], [debian.read_list(p) for p in trans_files], OPTS)
    assert len(all_rows(splits)) == 8
    assert debian.release_info(tmp_path / "apt" / "lists", "bookworm")["version"] == "12.5"


def test_near_duplicates_of_training_text_leave_test_and_val():
    """A held-out row whose source is a version of a training row's (gtkmm3.0 / gtkmm2.4), or whose description is
    a near copy of a training description (a renamed source), is dropped; distinct rows stay."""
    from plad.prepare.debian import near_duplicates

    def row(package, source, description):
        return {"package": package, "source": source, "description": description}

    pool = [
        row("libgtkmm-2.4-1v5", "gtkmm2.4", "C++ wrappers for GTK widgets and more"),
        row("libqt5gui5", "qtbase-opensource-src", "The Qt GUI module provides classes for windowing system "
            "integration event handling OpenGL and OpenGL ES integration 2D graphics imaging fonts and typography"),
        row("cowsay", "cowsay", "A configurable talking cow written in Perl"),
    ]  # fmt: skip
    held_out = [
        row("libgtkmm-3.0-1v5", "gtkmm3.0", "entirely different words here"),
        row("libqt6gui6", "qt6-base", "The Qt GUI module provides classes for windowing system integration event "
            "handling OpenGL and OpenGL ES integration 2D graphics imaging fonts and typography too"),
        row("figlet", "figlet", "Make large character ASCII banners out of ordinary text"),
    ]  # fmt: skip
    assert near_duplicates(held_out, pool, 0.8) == [
        ("libgtkmm-3.0-1v5", "libgtkmm-2.4-1v5"),
        ("libqt6gui6", "libqt5gui5"),
    ]
    # the qt pair shares all but one of its distinct words: more than 0.8 of them, not more than 0.97
    assert near_duplicates(held_out[1:], pool, 0.97) == []
