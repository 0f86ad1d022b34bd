"""Training and collection text: real documents cleaned, split by document, tokenized, packed in one bundle.

Sources are the Debian packages ``linux-doc-6.1`` (kernel documentation, reStructuredText) and
``python3.11-doc`` (Python documentation sources), the Python standard library's own source code, or any
files and folders a user names. Markup is stripped (reST directives, roles and adornments; HTML tags);
code stays as it is. Each document goes to train, validation or test by a hash of its name, so the split
never depends on file order or on which other documents exist. A byte-level BPE tokenizer (the
``tokenizers`` package) is trained on the train split only. The bundle is one ``.tar.xz`` holding
``manifest.json``, ``tokenizer.json``, ``documents.json`` and one uint16 token array per split (documents
joined by the end-of-text token).
"""

from __future__ import annotations

import gzip
import hashlib
import html.parser
import io
import json
import os
import re
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from traces.fileio import InputError, atomic_write

SPLITS = ("train", "validation", "test")
EOS = "<|endoftext|>"
BUNDLE_FORMAT = "moe-prefetch-corpus"
BUNDLE_VERSION = 1

#: Named sources: where their files are, and which files count as documents.
NAMED_SOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "linux-doc": (("/usr/share/doc/linux-doc-6.1/Documentation",), (".rst", ".rst.gz", ".txt", ".txt.gz")),
    "python-doc": (
        ("/usr/share/doc/python3.11/html/_sources", "/usr/share/doc/python3.11-doc/html/_sources"),
        (".rst.txt", ".txt"),
    ),
    "stdlib": ((), (".py",)),
}
DEFAULT_SOURCES = ("linux-doc", "python-doc", "stdlib")
TEXT_SUFFIXES = (".rst", ".txt", ".md", ".html", ".htm", ".py")
#: Standard-library folders that are tests, bundled third-party code or IDE code, not library source.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "__pycache__"}


@dataclass(frozen=True)
class Document:
    """One document: ``name`` is ``<source>/<relative path>`` (stable across machines), ``text`` is clean."""

    name: str
    text: str


# ---------------------------------------------------------------------------------------------- cleaning

_ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::\s*(.*)$")
_EXPLICIT = re.compile(r"^(\s*)\.\.(\s|$)")
_OPTION = re.compile(r"^\s+:[\w -]+:")
_ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*(?:<[^`>]*>)?`__?")
_LITERAL = re.compile(r"``([^`]*)``")
_STRONG = re.compile(r"\*\*([^*\n]+)\*\*")
_BLANKS = re.compile(r"\n{3,}")
#: Directives whose whole body is markup or pointers, not prose.
_DROP_DIRECTIVES = {
    "toctree", "kernel-doc", "include", "literalinclude", "image", "figure", "raw", "only", "index",
    "highlight", "contents", "sectionauthor", "moduleauthor", "tabularcolumns", "c:namespace",
    "c:namespace-push", "c:namespace-pop", "cssclass", "rst-class", "kernel-feat", "kernel-abi",
    "kernel-include", "maintainers-include", "csv-table", "flat-table", "default-domain", "currentmodule",
    "module", "testsetup", "testcleanup", "audit-event", "opcodehash", "impl-detail", "miscnews",
}  # fmt: skip
_VERSION_NOTES = {
    "versionadded": "New in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}


def _role_text(match: re.Match[str]) -> str:
    text = match.group(1)
    target = re.match(r"^(.*?)\s*<[^>]*>$", text, flags=re.S)
    if target and target.group(1):
        text = target.group(1)
    return text.lstrip("~!")


def clean_rst(text: str) -> str:
    """reStructuredText to plain prose: directives, comments, targets, adornments and roles removed;
    directive arguments and bodies kept (a function's signature, a note's text, a code block's code)
    except for pure-markup directives, whose bodies go too."""
    out: list[str] = []
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        explicit = _EXPLICIT.match(line)
        if directive or explicit:
            indent = len((directive or explicit).group(1))  # type: ignore[union-attr]
            name = directive.group(2).lower() if directive else ""
            i += 1
            if directive is None or name in _DROP_DIRECTIVES:
                while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
                    i += 1
                continue
            argument = directive.group(3)
            if name in _VERSION_NOTES:
                argument = f"{_VERSION_NOTES[name]} {argument}."
            if argument:
                out.append(" " * indent + argument)
            while i < len(lines) and _OPTION.match(lines[i]):
                i += 1
            continue  # the body is indented text: the loop cleans it like any other
        if not _ADORNMENT.match(line):
            out.append(line)
        i += 1
    body = "\n".join(out)
    body = _ROLE.sub(_role_text, body)
    body = _LINK.sub(lambda m: m.group(1), body)
    body = _LITERAL.sub(lambda m: m.group(1), body)
    body = _STRONG.sub(lambda m: m.group(1), body)
    body = re.sub(r"(\S)::(\s*)$", r"\1:\2", body, flags=re.M)
    body = re.sub(r"^\s*::\s*$", "", body, flags=re.M)
    body = "\n".join(line.rstrip() for line in body.split("\n"))
    return _BLANKS.sub("\n\n", body).strip() + "\n"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


class _TextExtractor(html.parser.HTMLParser):
    _SKIP = frozenset({"script", "style", "head"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def clean_html(text: str) -> str:
    """The visible text of an HTML page (no tags, scripts or styles), blank runs collapsed."""
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    body = "\n".join(line.strip() for line in "".join(parser.parts).split("\n"))
    return _BLANKS.sub("\n\n", body).strip() + "\n"


def clean_code(text: str) -> str:
    """Source code stays as it is, apart from line endings and trailing blanks."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip("\n") + "\n"


def clean_document(name: str, raw: str) -> str:
    """Clean ``raw`` according to the file type its name says (``.gz`` already removed)."""
    lower = name.lower()
    if lower.endswith((".html", ".htm")):
        return clean_html(raw)
    if lower.endswith(".py"):
        return clean_code(raw)
    return clean_rst(raw)


# ---------------------------------------------------------------------------------------------- sources


def _read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(source: str) -> tuple[str, Path, list[Path]]:
    """(source label, root, sorted document files) of a named source or a user's file or folder."""
    if source in NAMED_SOURCES:
        roots, suffixes = NAMED_SOURCES[source]
        candidates = [_stdlib_root()] if source == "stdlib" else [Path(r) for r in roots]
        root = next((r for r in candidates if r.is_dir()), None)
        if root is None:
            raise InputError(candidates[0] if candidates else source, f"source {source!r} is not installed")
        label = source
    else:
        root, suffixes, label = Path(source), TEXT_SUFFIXES + tuple(s + ".gz" for s in TEXT_SUFFIXES), ""
        if not root.exists():
            raise InputError(source, f"no such file or folder (nor one of {', '.join(NAMED_SOURCES)})")
        label = root.name or "corpus"
        if root.is_file():
            return label, root.parent, [root]
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root).parts
        if source == "stdlib" and _STDLIB_SKIP.intersection(relative[:-1]):
            continue
        if path.is_file() and path.name.lower().endswith(suffixes):
            files.append(path)
    if not files:
        raise InputError(root, f"no document files ({', '.join(suffixes)}) found")
    return label, root, sorted(files)


def read_documents(sources: Iterable[str], min_chars: int = 200) -> Iterator[Document]:
    """Cleaned documents of every source, in a stable order; very short documents are skipped."""
    for source in sources:
        label, root, files = source_files(source)
        for path in files:
            relative = path.relative_to(root).as_posix()
            name = f"{label}/{relative[:-3] if relative.endswith('.gz') else relative}"
            text = clean_document(name, _read_text(path))
            if len(text) >= min_chars:
                yield Document(name, text)


def split_of(name: str, validation_fraction: float, test_fraction: float) -> str:
    """train/validation/test from a hash of the document's name alone: deterministic and order-free."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


# ---------------------------------------------------------------------------------------------- building


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenization) with ``EOS`` as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_bundle(
    sources: Iterable[str],
    out: str | os.PathLike[str],
    vocab_size: int = 16384,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    min_chars: int = 200,
) -> dict[str, Any]:
    """Clean, split, tokenize and write the bundle; returns its manifest."""
    import tokenizers

    if not 256 < vocab_size <= 65535:
        raise ValueError("vocab_size must be in (256, 65535] (token ids are stored as uint16)")
    sources = list(sources)
    documents = list(read_documents(sources, min_chars))
    if not documents:
        raise InputError(", ".join(sources), "no documents left after cleaning")
    splits = [split_of(d.name, validation_fraction, test_fraction) for d in documents]
    train_texts = [d.text for d, s in zip(documents, splits, strict=True) if s == "train"]
    if not train_texts:
        raise InputError(", ".join(sources), "the train split is empty (too few documents)")
    tokenizer = train_tokenizer(train_texts, vocab_size)
    eos = tokenizer.token_to_id(EOS)
    encoded = tokenizer.encode_batch([d.text for d in documents])
    arrays = {}
    doc_rows = []
    for split in SPLITS:
        pieces = []
        for doc, doc_split, enc in zip(documents, splits, encoded, strict=True):
            if doc_split == split:
                pieces.extend([enc.ids, [eos]])
                doc_rows.append(
                    {"name": doc.name, "split": split, "tokens": len(enc.ids), "chars": len(doc.text)}
                )
        arrays[split] = np.fromiter((t for p in pieces for t in p), dtype=np.uint16)
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "sources": {s: _describe_source(s) for s in sources},
        "cleaning": "reST directives/comments/targets/adornments and roles stripped, HTML tags stripped, "
        f"code kept verbatim; documents under {min_chars} characters skipped",
        "split_rule": f"by sha256 of the document name: test {test_fraction}, "
        f"validation {validation_fraction}, the rest train",
        "tokenizer": {
            "kind": "byte-level BPE trained from scratch on the train split",
            "package": f"tokenizers {tokenizers.__version__}",
            "vocab_size": tokenizer.get_vocab_size(),
            "eos_id": eos,
        },
        "splits": {
            split: {
                "documents": sum(1 for s in splits if s == split),
                "tokens": len(arrays[split]),
                "chars": sum(len(d.text) for d, s in zip(documents, splits, strict=True) if s == split),
            }
            for split in SPLITS
        },
    }
    _write_bundle(out, manifest, tokenizer.to_str(), doc_rows, arrays)
    return manifest


def _describe_source(source: str) -> str:
    label, root, files = source_files(source)
    return f"{label}: {len(files)} files under {root}"


def _write_bundle(out, manifest, tokenizer_json: str, doc_rows, arrays: dict[str, np.ndarray]) -> None:
    members = {
        "manifest.json": json.dumps(manifest, indent=1, sort_keys=True).encode(),
        "tokenizer.json": tokenizer_json.encode(),
        "documents.json": json.dumps(doc_rows).encode(),
    }
    for split, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        members[f"{split}.npy"] = buffer.getvalue()
    with atomic_write(out, suffix=".tar.xz") as tmp, tarfile.open(tmp, "w:xz", preset=9) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------- reading


class CorpusBundle:
    """A bundle read into memory (token arrays are small: 2 bytes a token)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(path, "no such corpus bundle")
        try:
            with tarfile.open(self.path, "r:*") as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError) as exc:
            # tarfile lists every compression it tried on lines of their own; the error must stay one line
            reason = str(exc).strip().splitlines()[0].rstrip(":") if str(exc).strip() else type(exc).__name__
            raise InputError(path, f"not a readable corpus bundle ({reason})") from None
        for name in ("manifest.json", "tokenizer.json", *(f"{s}.npy" for s in SPLITS)):
            if name not in members:
                raise InputError(path, f"bundle has no {name}")
        try:
            self.manifest: dict[str, Any] = json.loads(members["manifest.json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(path, f"manifest.json is not valid JSON ({exc})") from None
        if (
            not isinstance(self.manifest, dict)
            or self.manifest.get("format") != BUNDLE_FORMAT
            or self.manifest.get("version") != BUNDLE_VERSION
        ):
            raise InputError(path, f"not a {BUNDLE_FORMAT} v{BUNDLE_VERSION} bundle")
        self.tokenizer_json = members["tokenizer.json"].decode()
        self.documents: list[dict[str, Any]] = json.loads(members.get("documents.json", b"[]"))
        self._tokens = {s: np.load(io.BytesIO(members[f"{s}.npy"])) for s in SPLITS}
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["tokenizer"]["eos_id"])

    def tokens(self, split: str) -> np.ndarray:
        """All tokens of a split (documents joined by the end-of-text token), uint16."""
        if split not in SPLITS:
            raise InputError(self.path, f"no split {split!r} (have {', '.join(SPLITS)})")
        return self._tokens[split]

    def sequences(self, split: str, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
        """The split cut into consecutive ``seq_len``-token sequences ([n, seq_len] int64), tail dropped."""
        tokens = self.tokens(split)
        n = len(tokens) // seq_len
        if max_tokens is not None:
            n = min(n, max(1, max_tokens // seq_len))
        if n == 0:
            raise InputError(self.path, f"split {split!r} has {len(tokens)} tokens, fewer than one sequence")
        return tokens[: n * seq_len].astype(np.int64).reshape(n, seq_len)

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json)

    def describe(self, split: str | None = None) -> str:
        """One line for provenance: sources, tokenizer, split sizes and the bundle's hash."""
        sources = "; ".join(self.manifest["sources"].values())
        part = f", split {split!r} ({self.manifest['splits'][split]['tokens']} tokens)" if split else ""
        tok = self.manifest["tokenizer"]
        return (
            f"{self.path.name} (sha256 {self.sha256[:12]}){part}; sources: {sources}; "
            f"tokenizer: {tok['kind']} ({tok['package']}, vocab {tok['vocab_size']}); "
            f"split: {self.manifest['split_rule']}"
        )
