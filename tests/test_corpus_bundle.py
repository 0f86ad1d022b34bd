"""Corpus bundles: markup stripped, split by document deterministically, tokenized, read back intact."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from moe_prefetch.cli import main
from traces.corpus import CorpusBundle, build_bundle, clean_html, clean_rst, split_of
from traces.fileio import InputError

RST = """\
.. SPDX-License-Identifier: GPL-2.0

.. _target-label:

=====================
The Frobnicator guide
=====================

The :c:func:`frob_init` call sets up a :ref:`frobnicator <frob-intro>` with
``FROB_FAST`` and **care**. See `the site <https://example.org>`_ for more.

.. toctree::
   :maxdepth: 2

   hidden-page

.. note::

   Never frobnicate twice.

.. function:: frob(level)

   Frobnicate at *level*.

   .. versionadded:: 3.9

Example::

    frob(3)
"""


def test_rst_markup_is_stripped_and_prose_kept():
    text = clean_rst(RST)
    assert "The Frobnicator guide" in text
    assert "The frob_init call sets up a frobnicator with" in text
    assert "FROB_FAST and care. See the site for more." in text
    assert "Never frobnicate twice." in text
    assert "frob(level)" in text and "Frobnicate at *level*." in text
    assert "New in version 3.9." in text
    assert "Example:\n" in text and "    frob(3)" in text
    for markup in ("SPDX", "target-label", "toctree", "maxdepth", "hidden-page", ":c:", "``", "===", ".. "):
        assert markup not in text


def test_html_tags_scripts_and_styles_are_stripped():
    page = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body><h1>Title</h1>"
        "<p>Some &amp; text</p><script>var x=1;</script><p>more</p></body></html>"
    )
    assert clean_html(page) == "Title\n\nSome & text\n\nmore\n"


def test_split_depends_on_the_document_name_only():
    names = [f"src/doc{i}.rst" for i in range(4000)]
    splits = [split_of(n, 0.1, 0.2) for n in names]
    assert splits == [split_of(n, 0.1, 0.2) for n in reversed(names)][::-1]
    shares = {s: splits.count(s) / len(names) for s in ("train", "validation", "test")}
    assert shares["test"] == pytest.approx(0.2, abs=0.03)
    assert shares["validation"] == pytest.approx(0.1, abs=0.03)


def make_corpus(root, count=40):
    rng = np.random.default_rng(0)
    words = ["kernel", "memory", "device", "driver", "the", "a", "page", "cache", "expert", "token"]
    for i in range(count):
        folder = root / f"part{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        body = " ".join(rng.choice(words, size=120))
        (folder / f"doc{i}.rst").write_text(f"Title {i}\n=======\n\n:ref:`{body}`\n")
    (root / "part0" / "page.html").write_text("<p>" + "html words here " * 30 + "</p>")
    (root / "part1" / "tiny.rst").write_text("too short")
    (root / "part1" / "image.png").write_bytes(b"\x89PNG")


def test_bundle_round_trip_and_document_split(tmp_path):
    make_corpus(tmp_path / "docs")
    manifest = build_bundle(
        [str(tmp_path / "docs")], tmp_path / "b.tar.xz", vocab_size=300, test_fraction=0.25
    )
    bundle = CorpusBundle(tmp_path / "b.tar.xz")
    assert bundle.manifest == manifest
    names = [d["name"] for d in bundle.documents]
    assert "docs/part0/page.html" in names
    assert not any(n.endswith(("tiny.rst", "image.png")) for n in names)
    assert len(names) == 41
    for doc in bundle.documents:
        assert doc["split"] == split_of(doc["name"], 0.05, 0.25)
    tokenizer = bundle.tokenizer()
    for split in ("train", "validation", "test"):
        tokens = bundle.tokens(split)
        docs = [d for d in bundle.documents if d["split"] == split]
        assert len(tokens) == sum(d["tokens"] + 1 for d in docs) == manifest["splits"][split]["tokens"]
        assert (tokens == bundle.eos_id).sum() == len(docs)
    first_test = next(d for d in bundle.documents if d["split"] == "test")
    decoded = tokenizer.decode(bundle.tokens("test")[: first_test["tokens"]].tolist())
    assert decoded.startswith("Title ")
    sequences = bundle.sequences("train", 16, max_tokens=100)
    assert sequences.shape == (6, 16)
    np.testing.assert_array_equal(sequences.reshape(-1), bundle.tokens("train")[:96])
    assert "sha256" in bundle.describe("test") and "byte-level BPE" in bundle.describe()


def test_bundle_is_deterministic(tmp_path):
    make_corpus(tmp_path / "docs", count=12)
    build_bundle([str(tmp_path / "docs")], tmp_path / "a.tar.xz", vocab_size=280)
    build_bundle([str(tmp_path / "docs")], tmp_path / "b.tar.xz", vocab_size=280)
    a, b = CorpusBundle(tmp_path / "a.tar.xz"), CorpusBundle(tmp_path / "b.tar.xz")
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(a.tokens(split), b.tokens(split))
    assert a.tokenizer_json == b.tokenizer_json


def test_cli_builds_a_bundle_and_rejects_bad_sources(tmp_path, capsys):
    make_corpus(tmp_path / "docs", count=10)
    out = tmp_path / "c.tar.xz"
    assert (
        main(
            ["corpus", "build", "--source", str(tmp_path / "docs"), "--out", str(out), "--vocab-size", "270"]
        )
        == 0
    )
    assert "tokens" in capsys.readouterr().out
    assert main(["corpus", "info", str(out)]) == 0
    assert "moe-prefetch-corpus" in capsys.readouterr().out
    assert (
        main(["corpus", "build", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "d.tar.xz")])
        == 2
    )
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "d.tar.xz").exists()


def test_broken_bundle_is_one_input_error(tmp_path):
    (tmp_path / "x.tar.xz").write_bytes(b"not a tar")
    with pytest.raises(InputError, match="not a readable corpus bundle"):
        CorpusBundle(tmp_path / "x.tar.xz")
    with tarfile.open(tmp_path / "y.tar.xz", "w:xz"):
        pass
    with pytest.raises(InputError, match=r"no manifest\.json"):
        CorpusBundle(tmp_path / "y.tar.xz")


def test_unreadable_bundle_is_reported_on_one_line(tmp_path, capsys):
    (tmp_path / "x.tar.xz").write_bytes(b"not a tar")
    assert main(["corpus", "info", str(tmp_path / "x.tar.xz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable corpus bundle" in err


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (b"{not json", r"manifest\.json is not valid JSON"),
        (b"[1, 2]", r"not a moe-prefetch-corpus v1 bundle"),
    ],
)
def test_bundle_with_a_broken_manifest_is_one_input_error(tmp_path, manifest, problem):
    bundle = tmp_path / "m.tar.xz"
    with tarfile.open(bundle, "w:xz") as tar:
        for name in ("manifest.json", "tokenizer.json", "train.npy", "validation.npy", "test.npy"):
            info = tarfile.TarInfo(name)
            body = manifest if name == "manifest.json" else b"x"
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    with pytest.raises(InputError, match=problem):
        CorpusBundle(bundle)
