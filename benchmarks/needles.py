"""Test documents for ``benchmarks.retrieval``: haystacks with planted needles, and L-Eval items.

A *needle* is a made-up fact planted at a sentence boundary of a long text, with a question
that paraphrases it and a short answer string that must not occur in the text before planting.
Two kinds (the retrieval benchmark's docstring says why both):

- ``direct``: one sentence holds the answer; the question paraphrases that sentence.
- ``later``: the question matches a *setup* sentence, and the answer sits in a sentence planted
  2 or 3 haystack sentences after it, sharing no content word with the question. Similarity
  search finds the setup; only what comes next holds the answer.

L-Eval's closed-ended sets have no gold passages. An item is used when its gold answer text (the
option text for multiple choice) has at least two words and occurs verbatim in the document,
after lower-casing and collapsing whitespace; the rest are skipped and counted.
"""

from __future__ import annotations

import json
import random
import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

EVAL_DATA = Path(__file__).resolve().parent.parent / "../shared/eval-data"

Kind = Literal["direct", "later"]
_BOUNDARY = re.compile("[.!?][\"')\u2019\u201d]*\\s+")  # a sentence ends; the next one starts after
_CONTENT_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and as at be by did do does for from had has he her his how in inside is it its "
        "of on or s she so that the their them they this to was were what when where which who "
        "whom why with",
    )
)


@dataclass(frozen=True, slots=True)
class Needle:
    kind: Kind
    fact: str  # direct: holds the answer; later: the setup the question matches
    question: str
    answer: str
    answer_sentence: str = ""  # later only: the sentence with the answer, planted after


@dataclass(frozen=True, slots=True)
class Question:
    query: str
    answer: str  # found when it occurs (normalised) in the recalled text
    kind: str  # "direct", "later", the L-Eval set it comes from, a LoCoMo category...
    depth: float = float("nan")  # planted needles: where, as a fraction of the document
    evidence: tuple[str, ...] = ()  # verbatim passages that hold the answer (scored instead)

    def recall(self, recalled: str) -> float:
        """How much of what answers this question ``recalled`` holds, in [0, 1].

        With ``evidence``: the fraction of its passages that occur in ``recalled``; otherwise 1
        when ``answer`` does. Both lower-cased with whitespace collapsed (:func:`normalise`).
        """
        text = normalise(recalled)
        if self.evidence:
            return sum(normalise(e) in text for e in self.evidence) / len(self.evidence)
        return float(normalise(self.answer) in text)


@dataclass(frozen=True, slots=True)
class Document:
    """One text to ingest and the questions asked of it; ``dataset`` names its table row."""

    dataset: str
    name: str
    text: str
    questions: list[Question] = field(default_factory=list)


def _direct(fact: str, question: str, answer: str) -> Needle:
    return Needle("direct", fact, question, answer)


def _later(setup: str, answer_sentence: str, question: str, answer: str) -> Needle:
    return Needle("later", setup, question, answer, answer_sentence)


NEEDLES: tuple[Needle, ...] = (
    _direct(
        "Marta Vell's prize-winning stew owed its flavour to a pinch of smoked cardamom.",
        "What spice gave Marta Vell's award-winning stew its taste?",
        "smoked cardamom",
    ),
    _direct(
        "The password to the old radio station on Fenwick Ridge was tangerine-falcon.",
        "What was the passcode for the former radio station at Fenwick Ridge?",
        "tangerine-falcon",
    ),
    _direct(
        "Captain Idris Mowbray named his sailing boat the Quiet Heron after his grandmother's "
        "garden.",
        "What did Captain Idris Mowbray call his sailboat?",
        "Quiet Heron",
    ),
    _direct(
        "The glassblower Oona Petrak sold her first vase for exactly forty-three shillings.",
        "How much did the glassblower Oona Petrak get for the first vase she sold?",
        "forty-three shillings",
    ),
    _direct(
        "Every spring the farmers of Lesser Anwick race uphill to the chapel carrying wheels of "
        "goat cheese.",
        "What do the farmers of Lesser Anwick carry in their springtime race?",
        "wheels of goat cheese",
    ),
    _direct(
        "Dr. Selma Okafor found the comet with a telescope she had built from a copper kettle.",
        "What household object did Dr. Selma Okafor turn into the telescope that found the comet?",
        "copper kettle",
    ),
    _direct(
        "The founder of Brightwater Mills kept exactly nineteen clocks in his study, each set to "
        "a different time.",
        "How many clocks did the founder of Brightwater Mills keep in his study?",
        "nineteen clocks",
    ),
    _direct(
        "The Verrin family's greyhound, Pistachio, once won a medal at the Dunmore county fair.",
        "What was the name of the Verrin family's greyhound?",
        "Pistachio",
    ),
    _direct(
        "The mayor of Tollbridge banned whistling on the ferry landing after a quarrel with the "
        "bell-ringer.",
        "Where did the mayor of Tollbridge forbid whistling?",
        "ferry landing",
    ),
    _direct(
        "Professor Anika Lund keeps her rare maps in a cedar trunk lined with green felt.",
        "What does Professor Anika Lund store her rare maps in?",
        "cedar trunk",
    ),
    _direct(
        "The bridge over the Salis river was painted saffron yellow to honour the engineer's "
        "late wife.",
        "What colour was the bridge over the river Salis painted?",
        "saffron yellow",
    ),
    _direct(
        "Teodor Halm learned to juggle from a travelling circus performer named Gustavo Brill.",
        "Who taught Teodor Halm how to juggle?",
        "Gustavo Brill",
    ),
    _direct(
        "The bakery on Pell Street flavours its famous almond rolls with a splash of rosewater.",
        "Which ingredient flavours the almond rolls of the Pell Street bakery?",
        "rosewater",
    ),
    _direct(
        "The expedition to Mount Karsh turned back because their mule ate the only map.",
        "Why did the expedition to Mount Karsh have to return?",
        "mule ate the only map",
    ),
    _direct(
        "Linnea Orr's first novel was rejected by eleven publishers before it won the Harwick "
        "Prize.",
        "How many publishers turned down Linnea Orr's debut novel?",
        "eleven publishers",
    ),
    _direct(
        "The orchard behind Quarry House grows a rare pear called the Moonwick Russet.",
        "What is the unusual pear variety grown in the orchard behind Quarry House called?",
        "Moonwick Russet",
    ),
    _later(
        "The archivist Hollis Brandt hid the stolen ledger inside the lighthouse at Carrow Point.",
        "It lay under the third floorboard, beneath a blue tin.",
        "Where inside the lighthouse at Carrow Point did the archivist hide the stolen ledger?",
        "third floorboard",
    ),
    _later(
        "Nobody in town learned why the chemist Ruth Aldane abandoned her laboratory in Kessel.",
        "The real cause was a letter from an estranged brother in Lisbon.",
        "Why did the chemist Ruth Aldane abandon her laboratory in Kessel?",
        "estranged brother",
    ),
    _later(
        "The harbour master of Port Ellery kept a list of every ship that vanished in the fog.",
        "At its top stood the Margaret Thorne, lost in 1871.",
        "Which vessel headed the Port Ellery harbour master's list of ships gone in the fog?",
        "Margaret Thorne",
    ),
    _later(
        "Old Mrs. Dunmore left her entire fortune to a most unexpected heir.",
        "Her lawyers eventually handed the money to the town's cat shelter.",
        "Who inherited old Mrs. Dunmore's entire fortune?",
        "cat shelter",
    ),
    _later(
        "The engineers of the Halvard tunnel argued for months about how to keep the water out.",
        "In the end they sealed the walls with a mixture of tar and horsehair.",
        "How did the Halvard tunnel engineers finally keep the water out?",
        "tar and horsehair",
    ),
    _later(
        "The poet Emil Sarkis wrote his famous elegy while waiting for a delayed train in Vorn.",
        "He scribbled the verses on the back of a laundry receipt.",
        "What did the poet Emil Sarkis write his famous elegy on while waiting in Vorn?",
        "laundry receipt",
    ),
    _later(
        "The gardeners at Wexley Abbey planted something unusual along the eastern wall.",
        "Those were forty lemon trees, brought by ship from Sicily.",
        "What did the Wexley Abbey gardeners plant along the eastern wall?",
        "lemon trees",
    ),
    _later(
        "During the long winter, the miners of Greyhollow survived on a single strange food.",
        "Each of them ate boiled turnip porridge at every meal.",
        "What strange food kept the Greyhollow miners alive through the long winter?",
        "turnip porridge",
    ),
    _later(
        "The clockmaker Anselm Rook built a machine for the duke that no one else could operate.",
        "Its purpose was to sort peppercorns by weight.",
        "What was the clockmaker Anselm Rook's machine for the duke designed to do?",
        "sort peppercorns",
    ),
    _later(
        "Inspector Wilda Marsh finally understood who had forged the museum's paintings.",
        "The culprit turned out to be the night janitor, Felix Oberlin.",
        "Who forged the museum's paintings, according to Inspector Wilda Marsh?",
        "Felix Oberlin",
    ),
    _later(
        "The schooner Albatross carried a secret cargo on its last voyage from Tangier.",
        "Below deck were crates of counterfeit postage stamps.",
        "What secret cargo did the schooner Albatross carry on its final voyage from Tangier?",
        "counterfeit postage stamps",
    ),
    _later(
        "The hermit of Blackmere Fen was said to keep one treasure hidden in his hut.",
        "Visitors who got inside found only a silver thimble.",
        "What treasure did the hermit of Blackmere Fen keep hidden in his hut?",
        "silver thimble",
    ),
    _later(
        "The council of Ambry voted on a new name for the town square.",
        "By a margin of two votes, Juniper Court was chosen.",
        "What new name did the council of Ambry pick for the town square?",
        "Juniper Court",
    ),
    _later(
        "The violinist Petra Kolb always performed with a lucky charm in her pocket.",
        "It was a chipped domino from her father's café.",
        "What lucky charm did the violinist Petra Kolb carry when she performed?",
        "chipped domino",
    ),
    _later(
        "The surveyors of the Orlan valley measured the depth of the lake twice.",
        "Both times the line stopped at two hundred and six fathoms.",
        "How deep did the Orlan valley surveyors find the lake to be?",
        "two hundred and six fathoms",
    ),
    _later(
        "A famous thief once stole the bell from the chapel at Saint Breoc.",
        "He melted it down into buttons for his coat.",
        "What did the famous thief do with the bell he stole from the chapel at Saint Breoc?",
        "buttons for his coat",
    ),
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that are not stop words."""
    return set(_CONTENT_WORD.findall(text.lower())) - _STOPWORDS


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: how answers are matched against recalled text."""
    return " ".join(text.lower().split())


def unwrap(text: str) -> str:
    """Hard-wrapped lines joined into paragraphs (Gutenberg and the essays wrap at ~70 columns).

    Mneme's sentence splitter ends a sentence at every newline, so wrapped lines would be cut
    mid-sentence; a loader for such files would join them the same way.
    """
    text = text.replace("\r\n", "\n")
    text = re.sub(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)", " ", text)  # a single newline inside a paragraph
    return re.sub(r"\n\s*\n\s*", "\n\n", text).strip() + "\n"


def read_book(path: Path) -> str:
    """A Gutenberg text, unwrapped, without the START/END marker lines where it has them."""
    text = path.read_text(encoding="utf-8")
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.MULTILINE)
    end = re.search(r"^\*\*\* ?END OF.*$", text, re.MULTILINE)
    return unwrap(text[start.end() if start else 0 : end.start() if end else len(text)])


def essays(folder: Path) -> str:
    """The Paul Graham essays concatenated in sorted file order (the haystack's usual order)."""
    paths = sorted(p for p in folder.glob("*.txt") if p.name != "rss.txt")  # rss.txt is a stub
    return "\n\n".join(unwrap(p.read_text(encoding="utf-8")).strip() for p in paths) + "\n"


def boundaries(text: str) -> list[int]:
    """Offsets where a sentence starts (after ``.``/``!``/``?``, closing quotes, whitespace)."""
    return [m.end() for m in _BOUNDARY.finditer(text) if m.end() < len(text)]


def truncate(text: str, tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of whole sentences of ``text`` with at most ``tokens`` tokens."""
    if count_tokens(text) <= tokens:
        return text
    ends = boundaries(text)
    lo, hi = 0, len(ends) - 1  # binary search on the sentence count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[: ends[mid]]) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[: ends[lo]]


def plant(text: str, needles: Sequence[Needle], seed: int, *, dataset: str, name: str) -> Document:
    """``text`` with every needle planted once at a sentence boundary, spread over its length.

    Needle i of the seeded order goes to a random depth inside the i-th of ``len(needles)``
    equal slices of the text; a ``later`` needle's answer sentence goes 2 or 3 sentences after
    its setup. Raises ValueError if an answer already occurs in the text or the text has too
    few sentences to hold them all.
    """
    haystack = normalise(text)
    present = [n.answer for n in needles if normalise(n.answer) in haystack]
    if present:
        raise ValueError(f"answers {present} already occur in {name}; choose other needles")
    starts = boundaries(text)
    if len(starts) < 8 * len(needles):
        raise ValueError(f"{name} has {len(starts)} sentences, too few for {len(needles)} needles")
    rng = random.Random(seed)
    order = rng.sample(list(needles), len(needles))
    inserts: list[tuple[int, str]] = []  # (offset in the original text, sentence)
    depth: dict[str, int] = {}
    last = -1  # index in ``starts`` of the previous insertion: slices never overlap
    for i, needle in enumerate(order):
        target = (i + rng.uniform(0.1, 0.9)) / len(order) * len(text)
        at = max(bisect_left(starts, target), last + 1)
        if at + 3 >= len(starts):
            raise ValueError(f"{name} ran out of sentence boundaries while planting")
        inserts.append((starts[at], needle.fact))
        depth[needle.question] = starts[at]
        last = at
        if needle.kind == "later":
            last = at + rng.choice((2, 3))
            inserts.append((starts[last], needle.answer_sentence))
    pieces, cursor = [], 0
    for offset, sentence in inserts:  # in increasing offset order
        pieces += [text[cursor:offset], sentence, " "]
        cursor = offset
    planted = "".join([*pieces, text[cursor:]])
    questions = [
        Question(n.question, n.answer, n.kind, depth[n.question] / len(text)) for n in order
    ]
    return Document(dataset, name, planted, questions)


# -- L-Eval ---------------------------------------------------------------------------------

_OPTION = re.compile(r"^\s*\(?([A-D])[).]\s*(.+?)\s*$")


def _stem(instruction: str) -> str:
    """The question without its options or trailing instructions to the model."""
    first = re.split(r"\n|\(A\)", instruction.strip(), maxsplit=1)[0]
    first = re.sub(r"^\s*(Question\s+)?\d+[.)]\s*", "", first)  # "Question 3." / "2."
    first = first.split("?")[0] + "?" if "?" in first else first
    return " ".join(first.split())


OPEN_ENDED = frozenset({"natural_question", "scientific_qa", "multidoc_qa", "legal_contract_qa"})
"""L-Eval's open-ended sets whose gold answers are often spans of the document."""


def _gold(source: str, instruction: str, output: str) -> str:
    """The gold answer's text, or "" when it is not text (a letter with no option, true/false)."""
    output = output.strip()
    if source == "quality":
        return re.sub(r"^\([A-D]\)\s*", "", output)
    if source in ("coursera", "tpo"):
        letters = re.findall(r"[A-D]", output)
        options: dict[str, str] = {}
        for line in instruction.splitlines():
            if match := _OPTION.match(line):
                options[match.group(1)] = match.group(2)
        return options.get(letters[0], "") if len(letters) == 1 else ""
    if source == "topic_retrieval_longchat" or source in OPEN_ENDED:
        return output
    return ""


@dataclass(frozen=True, slots=True)
class LEvalSet:
    """The documents of one L-Eval set that have usable items, and the item counts."""

    documents: list[Document]
    used: int  # items kept (in ``documents``)
    skipped: int  # items of the scanned documents whose answer is not in the text


def leval(folder: Path, source: str, *, max_documents: int | None = None) -> LEvalSet:
    """Usable items of one L-Eval closed-ended set (see the module docstring).

    Documents are scanned in file order until ``max_documents`` with a usable item are found;
    documents without one are left out, their items counted as skipped.
    """
    documents: list[Document] = []
    skipped = 0
    kind = "open-ended" if source in OPEN_ENDED else "closed-ended"
    lines = (folder / kind / f"{source}.jsonl").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if max_documents is not None and len(documents) >= max_documents:
            break
        record = json.loads(line)
        text = normalise(record["input"])
        questions = []
        for instruction, output in zip(record["instructions"], record["outputs"], strict=True):
            gold = normalise(_gold(source, instruction, output)).rstrip(" .")
            if len(gold.split()) >= 2 and gold in text:
                questions.append(Question(_stem(instruction), gold, source))
            else:
                skipped += 1
        if questions:
            documents.append(Document(source, f"{source}-{number}", record["input"], questions))
    return LEvalSet(documents, sum(len(d.questions) for d in documents), skipped)


def leval_queries(folder: Path) -> list[str]:
    """The question of every closed-ended L-Eval item, usable or not (search-latency queries)."""
    out = []
    for path in sorted((folder / "closed-ended").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            out += [_stem(i) for i in json.loads(line)["instructions"]]
    return list(dict.fromkeys(q for q in out if q.strip()))
