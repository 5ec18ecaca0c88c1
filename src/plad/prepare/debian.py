"""The real-text task of the real benchmark: Debian package descriptions -> their one-line synopses.

The long description (written by the package's maintainer) is the input, the synopsis (the one-line summary on
the `Description:` line, also the maintainer's) is the target: human-written summarisation with about 27k usable
pairs. The texts come from the archive's `Translation-en` files, which plain `apt-get update` does not fetch; they
are fetched into a private folder (the system's apt state is not touched) and joined with the `Packages` files for
each binary's source package. The texts carry their packages' licences, so they are built at run time and never
committed.

Rules (each tested in tests/test_debian.py):
- drop transitional, dummy and meta packages and the -doc, -dev, -dbg, -data, -common and -prof binaries (their
  synopses are templates of another package's);
- keep descriptions of `min_words`..`max_words` words (64: about 85 prompt tokens, so that the benchmark fits a
  2-core machine) and synopses of `min_synopsis_words`..`max_synopsis_words`;
- keep one binary per source package (binaries of one source share text, so train would leak into test): the
  binary named like its source, else the shortest name;
- cap formulaic families (r-cran-*, libghc-*, lib*-perl, ...) at `family_cap` packages each, so that no method can
  win on templates alone;
- split by a salted hash of the source name (deterministic, and no source in two splits), and drop a test or
  validation row whose source is a version of a training row's (gtkmm3.0 / gtkmm2.4) or whose description is a
  near copy of a training description (renamed sources: qtbase-opensource-src / qt6-base);
- write every split in that hash order, so that the first N rows of a file are a random sample of it; the
  unlabeled split carries no targets.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from plad.utils.errors import DataError

log = logging.getLogger("plad")

# A system message replaces the chat template's default one (SmolLM2's is 20 tokens); the user message holds the
# package name and its description. The synopsis alone is the answer (no "The synopsis is:" line).
SYSTEM = "Write the one-line synopsis of a Debian package."
DROP_SUFFIXES = ("-doc", "-dev", "-dbg", "-data", "-common", "-prof")
DROP_WORDS = re.compile(r"\b(transitional|dummy|metapackage|meta-package|meta package)\b", re.IGNORECASE)
# name pattern -> family; a package outside these is its own family (no cap applies)
FAMILIES = (
    ("r-cran", re.compile(r"^r-cran-")),
    ("r-bioc", re.compile(r"^r-bioc-")),
    ("r-other", re.compile(r"^r-")),
    ("libghc", re.compile(r"^libghc-")),
    ("perl", re.compile(r"^lib.*-perl$")),
    ("python", re.compile(r"^python3?-")),
    ("golang", re.compile(r"^golang-")),
    ("node", re.compile(r"^node-")),
    ("ruby", re.compile(r"^ruby-")),
    ("php", re.compile(r"^php-")),
    ("rust", re.compile(r"^librust-")),
    ("java", re.compile(r"^lib.*-java$")),
    ("ocaml", re.compile(r"^lib.*-ocaml")),
    ("elpa", re.compile(r"^elpa-")),
    ("fonts", re.compile(r"^fonts-")),
    ("texlive", re.compile(r"^texlive-")),
    ("lua", re.compile(r"^lua-")),
    ("jsdeps", re.compile(r"^libjs-")),
)
SPLITS = ("test", "val", "train", "unlabeled")
COMPRESSED = (".lz4", ".xz", ".gz", ".bz2", ".lzma", ".zst")  # what apt may store its lists as


class DebianError(DataError):
    """The archive lists could not be fetched or read; the message says what to do (a DataError, so that the CLI
    prints it as one line)."""


@dataclass(frozen=True)
class DebianOptions:
    min_words: int = 15
    max_words: int = 64
    min_synopsis_words: int = 2
    max_synopsis_words: int = 16
    family_cap: int = 150
    n_test: int = 500
    n_val: int = 300
    # test/val rows whose source is a version of a training row's, or whose description shares more than
    # max_jaccard of its words with a training description, are dropped
    drop_near_duplicates: bool = True
    max_jaccard: float = 0.8
    salt: str = "plad-debian-v1"


def parse_deb822(text: str) -> Iterator[dict[str, str]]:
    """Paragraphs of an apt list ("Field: value" lines; continuation lines start with a space), fields as text
    with continuation lines joined by newlines (their leading space kept)."""
    para: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if para:
                yield para
            para, key = {}, None
        elif line[0] in " \t" and key is not None:
            para[key] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            para[key] = value.strip()
    if para:
        yield para


def description_text(long: str) -> str:
    """The long description as plain text: paragraphs (" ." lines) separated by a blank line, the wrapped lines
    of a paragraph joined by spaces, verbatim lines (two leading spaces: lists, code) kept on lines of their own."""
    paras: list[str] = []
    lines: list[tuple[str, bool]] = []  # (text, verbatim) of the current paragraph
    for raw in long.split("\n"):
        text = raw.strip()
        if text == ".":
            if lines:
                paras.append("\n".join(t for t, _ in lines))
            lines = []
        elif text:
            verbatim = raw.startswith("  ")
            if lines and not verbatim and not lines[-1][1]:
                lines[-1] = (lines[-1][0] + " " + text, False)
            else:
                lines.append((text, verbatim))
    if lines:
        paras.append("\n".join(t for t, _ in lines))
    return "\n\n".join(paras).strip()


def family(name: str) -> str:
    return next((fam for fam, pattern in FAMILIES if pattern.search(name)), name)


def _split_key(source: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{source}".encode()).hexdigest()


def extract(
    packages: Iterable[str], translations: Iterable[str], options: DebianOptions
) -> dict[str, list[dict]]:
    """Rows {id, prompt, target, meta} per split from the texts of `Packages` and `Translation-en` files."""
    candidates = _candidates(packages, translations, options)
    # one binary per source: the one named like the source, else the shortest (then alphabetical) name
    chosen = [
        min(rows, key=lambda r: (r["package"] != source, len(r["package"]), r["package"]))
        for source, rows in candidates.items()
    ]
    chosen.sort(key=lambda r: _split_key(r["source"], options.salt))
    kept, per_family = [], {}
    for r in chosen:  # hash order, so the cap keeps a random sample of each family
        fam = family(r["package"])
        per_family[fam] = per_family.get(fam, 0) + 1
        if per_family[fam] <= options.family_cap:
            kept.append({**r, "family": fam})
    if len(kept) < options.n_test + options.n_val + 2:
        raise DebianError(
            f"only {len(kept)} packages pass the filters; the lists look incomplete (fetch them again)"
        )
    splits = _split(kept, options)
    pool = splits["train"] + splits["unlabeled"]
    for held_out in ("test", "val") if options.drop_near_duplicates else ():
        leaks = near_duplicates(splits[held_out], pool, options.max_jaccard)
        if leaks:
            log.info("debian: %d %s rows dropped, near-duplicates of training text: %s", len(leaks), held_out,
                     ", ".join(f"{a}~{b}" for a, b in leaks[:5]) + (" ..." if len(leaks) > 5 else ""))  # fmt: skip
            dropped = {a for a, _ in leaks}
            splits[held_out] = [r for r in splits[held_out] if r["package"] not in dropped]
    # rows in the salted-hash order: the first N of a file (pairs.limit, eval.limit, val_limit, data fractions)
    # are a random sample of it, not the packages whose names start with "a"
    return {s: [_row(r, labeled=s != "unlabeled") for r in rows] for s, rows in splits.items()}


def _candidates(
    packages: Iterable[str], translations: Iterable[str], options: DebianOptions
) -> dict[str, list[dict]]:
    """Source package -> its binaries whose description and synopsis pass the filters (no transitional, dummy,
    -doc, -dev, ... packages; description and synopsis lengths in range)."""
    source_of: dict[str, tuple[str, str]] = {}  # binary -> (source, section)
    for text in packages:
        for p in parse_deb822(text):
            name = p.get("Package")
            if name and name not in source_of:
                source = p.get("Source", name).split()[0]  # "src (version)" -> src
                source_of[name] = (source, p.get("Section", ""))
    candidates: dict[str, list[dict]] = {}  # source -> binaries that pass the filters
    seen: set[str] = set()
    for text in translations:
        for p in parse_deb822(text):
            name, desc = p.get("Package"), p.get("Description-en")
            if not name or not desc or name in seen or name not in source_of:
                continue
            seen.add(name)
            synopsis, _, long = desc.partition("\n")
            synopsis = synopsis.strip()
            if name.endswith(DROP_SUFFIXES) or DROP_WORDS.search(synopsis) or DROP_WORDS.search(long[:200]):
                continue
            body = description_text(long)
            n_words, n_syn = len(body.split()), len(synopsis.split())
            if not (options.min_words <= n_words <= options.max_words):
                continue
            if not (options.min_synopsis_words <= n_syn <= options.max_synopsis_words):
                continue
            source, section = source_of[name]
            candidates.setdefault(source, []).append(
                {
                    "package": name,
                    "source": source,
                    "section": section,
                    "synopsis": synopsis,
                    "description": body,
                }
            )
    return candidates


def _split(kept: list[dict], options: DebianOptions) -> dict[str, list[dict]]:
    """test and val: the first packages in the salted-hash order; the rest train or unlabeled by a second hash."""
    splits = {s: [] for s in SPLITS}
    for i, r in enumerate(kept):
        if i < options.n_test:
            split = "test"
        elif i < options.n_test + options.n_val:
            split = "val"
        else:
            split = (
                "train" if int(_split_key(r["source"], options.salt + ":half"), 16) % 2 == 0 else "unlabeled"
            )
        splits[split].append(r)
    return splits


def _group(source: str) -> str:
    """A source package's name without version numbers: gtkmm3.0 and gtkmm2.4, cpp-11 and cpp are one group."""
    return re.sub(r"[\d.+~]+", "", source).strip("-")


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


def near_duplicates(held_out: list[dict], pool: list[dict], max_jaccard: float) -> list[tuple[str, str]]:
    """(held-out package, training package) for every held-out row whose source is a version of a training row's
    source, or whose description shares more than `max_jaccard` of its words with a training description
    (Jaccard; renamed sources such as qtbase-opensource-src / qt6-base carry the same text)."""
    groups = {_group(r["source"]): r["package"] for r in pool}
    pool_words = [(_words(r["description"]), r["package"]) for r in pool]
    out = []
    for r in held_out:
        if (match := groups.get(_group(r["source"]))) is not None:
            out.append((r["package"], match))
            continue
        w = _words(r["description"])
        for pw, name in pool_words:
            small, large = (w, pw) if len(w) <= len(pw) else (pw, w)
            if len(small) > max_jaccard * len(large) and len(w & pw) > max_jaccard * len(w | pw):
                out.append((r["package"], name))
                break
    return out


def _row(r: dict, labeled: bool = True) -> dict:
    """A data row; an unlabeled one (the distillation prompts) carries no target: no method may read its label."""
    user = f"Package: {r['package']}\n\n{r['description']}"
    row = {
        "id": r["package"],
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "target": r["synopsis"],
        "meta": {"source": r["source"], "section": r["section"], "family": r["family"]},
        "text": r["description"],  # the unlabeled text that heals a pruned student
    }
    if not labeled:
        del row["target"]
    return row


# --------------------------------------------------------------------------------------------------------------
# The archive lists


def check_apt(sources: Path | None = None) -> Path:
    """The sources file that fetch_lists will use, after checking that apt-get and the file exist (cheap: `plad
    prepare` calls it before any download)."""
    if shutil.which("apt-get") is None:
        raise DebianError(
            "apt-get is not installed, so the Debian lists cannot be fetched on this machine; build the data set "
            "on a Debian/Ubuntu machine and pass its JSONL files (prepare.data_dir), or install apt"
        )
    sources = sources or Path("/etc/apt/sources.list.d/debian.sources")
    if not sources.is_file():
        raise DebianError(
            f"{sources} does not exist: this machine has no Debian sources file to copy; set prepare.apt_sources to "
            "a deb822 .sources file naming a Debian mirror"
        )
    return sources


def fetch_lists(dest: Path, sources: Path | None = None) -> None:
    """`apt-get update` into `dest` with English translations, without touching the system's apt state."""
    sources = check_apt(sources)
    dest = (
        dest.resolve()
    )  # apt reads a relative Dir::* path as relative to its own folders (/var/lib/apt, /etc/apt)
    parts = dest / "sources.d"
    (dest / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (dest / "cache").mkdir(parents=True, exist_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sources, parts / sources.name)
    cmd = [
        "apt-get", "update", "-q",
        "-o", f"Dir::State::Lists={dest / 'lists'}",
        "-o", f"Dir::Cache={dest / 'cache'}",  # its package cache too (pkgcache.bin), not the system's
        "-o", "Acquire::Languages=en",
        "-o", "Dir::Etc::sourcelist=/dev/null",
        "-o", f"Dir::Etc::sourceparts={parts}",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or "Err:" in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DebianError(
            f"apt-get update could not fetch the Debian lists (is the mirror reachable?): {' | '.join(tail)}"
        )


def list_files(lists: Path, suite: str) -> tuple[list[Path], list[Path]]:
    """The Packages and Translation-en files of `suite`'s main component (e.g. bookworm, not bookworm-updates)."""
    pkgs = sorted(lists.glob(f"*_dists_{suite}_main_binary-*_Packages*"))
    trans = sorted(lists.glob(f"*_dists_{suite}_main_i18n_Translation-en*"))
    if not pkgs or not trans:
        raise DebianError(
            f"{lists} holds no Packages or Translation-en files of suite {suite!r}; fetch the lists again or set "
            "prepare.suite to the suite the sources file names"
        )
    return pkgs, trans


def read_list(path: Path) -> str:
    """A list file's text, decompressed by apt itself (lz4, xz, gz or plain: whatever the mirror served)."""
    helper = Path("/usr/lib/apt/apt-helper")
    # by the name's ending: Path.suffix of an uncompressed list is a piece of the mirror's host name
    # ("deb.debian.org_debian_dists_..._Packages" -> ".org_debian_dists_..._Packages")
    if not path.name.endswith(COMPRESSED):
        return path.read_text(encoding="utf-8", errors="replace")
    if not helper.exists():
        raise DebianError(f"{path} is compressed and apt-helper is missing to read it")
    proc = subprocess.run([str(helper), "cat-file", str(path)], capture_output=True)
    if proc.returncode != 0:
        raise DebianError(f"could not read {path}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode("utf-8", errors="replace")


def release_info(lists: Path, suite: str) -> dict:
    """The archive's date and version from the suite's InRelease (else Release) file (for the results'
    provenance)."""
    files = sorted(lists.glob(f"*_dists_{suite}_InRelease")) or sorted(lists.glob(f"*_dists_{suite}_Release"))
    if not files:
        return {}
    fields = {}
    for line in files[0].read_text(errors="replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Origin", "Suite", "Version", "Codename", "Date"):
            fields[key.lower()] = value.strip()
    return fields
