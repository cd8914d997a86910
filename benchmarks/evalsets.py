"""The public sets ``benchmarks.retrieval`` measures, split into tuning and held-out sets.

Every item must have its answer, or the passages that hold it, verbatim in its document, so
recall needs no judge: an item scores the fraction of its evidence passages (or 1 for its answer
string) found in the text a system returns (``Question.recall``). Sets and what counts:

- planted needles (``benchmarks.needles``): the answer string.
- L-Eval: items whose gold answer (≥ 2 words) occurs verbatim in the document: the open-ended
  sets natural_question, scientific_qa, multidoc_qa (the answer span), and the multiple-choice
  sets quality, coursera, tpo (the gold option's text; few items).
- LoCoMo: every question with evidence turns; evidence = the text of each evidence turn (the
  conversation is one document, a line per turn under a dated header per session); scored per
  category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial: the README's
  names).
- BAMBOO meetingqa / paperqa: evidence = the sentences (≥ 4 words) of the item's evidence field
  that occur verbatim in its document. altqa: the answer number with the two words before it
  (its evidence: a snippet, so the number must come back where the document says it),
  for items where the number occurs once in the document.
- the QuALITY example: the gold option's text, when verbatim (none is: reported as 0 items).

Which sets tune the defaults and which are held out is :data:`SPLITS`.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from benchmarks.needles import Document, Question, leval, normalise

Split = Literal["tuning", "held-out"]

LOCOMO_CATEGORIES = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
LOCOMO_TUNING = ("conv-26", "conv-30")
"""LoCoMo conversations used for tuning; the others named in a run are held out."""
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(slots=True)
class EvalSet:
    """One row group of the tables: documents with questions, from one source."""

    name: str
    split: Split
    documents: list[Document] = field(default_factory=list)
    note: str = ""

    @property
    def questions(self) -> int:
        return sum(len(d.questions) for d in self.documents)


@dataclass(frozen=True, slots=True)
class Caps:
    """How much of each source a run reads (the full sets would take hours on two cores)."""

    locomo_held_out: int = 4  # conversations after the tuning ones
    leval_documents: int = 6  # per open-ended L-Eval set
    leval_choice_documents: int = 4  # per multiple-choice L-Eval set
    bamboo_items: int = 25  # per BAMBOO set (each item is its own document)


def locomo(path: Path, conversations: Callable[[str], bool]) -> list[Document]:
    """LoCoMo conversations as documents, one per conversation that ``conversations`` keeps.

    Questions whose evidence names no turn of the conversation are left out.
    """
    documents = []
    for record in json.loads(path.read_text(encoding="utf-8")):
        if not conversations(record["sample_id"]):
            continue
        talk = record["conversation"]
        lines, turns = [], {}
        sessions = sorted(
            (int(k.split("_")[1]) for k in talk if re.fullmatch(r"session_\d+", k)),
        )
        for number in sessions:
            lines.append(f"\n[Session {number}, {talk.get(f'session_{number}_date_time', '')}]")
            for turn in talk[f"session_{number}"]:
                caption = (
                    f" [shares a photo: {turn['blip_caption']}]" if "blip_caption" in turn else ""
                )
                lines.append(f"{turn['speaker']}: {turn['text']}{caption}")
                turns[turn["dia_id"]] = turn["text"]
        questions = []
        for item in record["qa"]:
            evidence = tuple(turns[e] for e in item.get("evidence", []) if e in turns)
            if not evidence:
                continue
            answer = str(item.get("answer", item.get("adversarial_answer", "")))
            category = LOCOMO_CATEGORIES.get(int(item["category"]), str(item["category"]))
            questions.append(Question(item["question"], answer, category, evidence=evidence))
        text = "\n".join(lines).strip() + "\n"
        documents.append(Document("LoCoMo", record["sample_id"], text, questions))
    return documents


def _verbatim_sentences(evidence: str, document: str) -> tuple[str, ...]:
    text = normalise(document)
    sentences = (normalise(s) for s in _SENTENCE.split(html.unescape(evidence).strip()))
    return tuple(dict.fromkeys(s for s in sentences if len(s.split()) >= 4 and s in text))


def _jsonl(path: Path) -> list[dict[str, object]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # three upstream lines are not valid JSON (see README)
            continue
    return records


def bamboo(path: Path, limit: int) -> tuple[list[Document], int]:
    """BAMBOO meetingqa / paperqa items with verbatim evidence (first ``limit`` usable);
    also returns how many items were skipped for having none."""
    documents: list[Document] = []
    skipped = 0
    for number, record in enumerate(_jsonl(path)):
        if len(documents) >= limit:
            break
        content = html.unescape(str(record["content"]))
        evidence = _verbatim_sentences(str(record["evidence"]), content)
        if not evidence:
            skipped += 1
            continue
        question = Question(str(record["question"]), "", path.stem, evidence=evidence)
        documents.append(Document(path.stem, f"{path.stem}-{number}", content, [question]))
    return documents, skipped


def altqa(path: Path, limit: int) -> tuple[list[Document], int]:
    """BAMBOO altqa items whose answer number occurs once in the document (see module doc)."""
    documents: list[Document] = []
    skipped = 0
    for number, record in enumerate(_jsonl(path)):
        if len(documents) >= limit:
            break
        content = str(record["content"])
        body, _, query = content.partition("\n\nQuestion:\n")
        body = body.split("Document:\n", 1)[-1]
        answer = str(record["answer"]).strip()
        found = list(re.finditer(rf"(?<![\d.,]){re.escape(answer)}(?![\d])", body))
        if len(found) != 1 or not query.strip():
            skipped += 1
            continue
        before = [w for w in body[: found[0].start()].split() if re.search(r"\w", w)][-2:]
        snippet = " ".join([*before, answer])
        if normalise(body).count(normalise(snippet)) != 1:
            skipped += 1
            continue
        question = Question(query.strip(), answer, "altqa", evidence=(snippet,))
        documents.append(Document("altqa", f"altqa-{number}", body, [question]))
    return documents, skipped


def quality_example(path: Path) -> tuple[list[Document], int]:
    """The QuALITY example's questions whose gold option occurs verbatim in the article."""
    documents: list[Document] = []
    skipped = 0
    for row, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        record = json.loads(line)
        article = html.unescape(re.sub(r"<[^>]+>", " ", " ".join(record["article"])))
        questions = []
        for i in range(1, 11):
            if f"question{i}" not in record:
                continue
            gold = normalise(str(record[f"question{i}option{record[f'question{i}_gold_label']}"]))
            if len(gold.split()) >= 2 and gold in normalise(article):
                questions.append(Question(str(record[f"question{i}"]), gold, "quality-example"))
            else:
                skipped += 1
        if questions:
            documents.append(
                Document("QuALITY example", f"quality-example-{row}", article, questions)
            )
    return documents, skipped


def evaluation_sets(data: Path, caps: Caps, quick: bool = False) -> list[EvalSet]:
    """Every set of a run, tuning sets first (planted needles are added by the caller)."""
    leval_folder = data / "leval"
    sets: list[EvalSet] = []

    def leval_set(source: str, split: Split, documents: int) -> EvalSet:
        found = leval(leval_folder, source, max_documents=documents)
        note = f"first {len(found.documents)} documents with a verbatim answer; {found.used} items"
        return EvalSet(f"L-Eval {source}", split, found.documents, note)

    conversations = 1 if quick else len(LOCOMO_TUNING)
    tuning_ids = set(LOCOMO_TUNING[:conversations])
    tuning = locomo(data / "locomo" / "locomo10.json", lambda s: s in tuning_ids)
    sets.append(EvalSet("LoCoMo", "tuning", tuning, f"{', '.join(sorted(tuning_ids))}"))
    sets.append(leval_set("scientific_qa", "tuning", 2 if quick else caps.leval_documents))
    paper, skipped = bamboo(data / "bamboo" / "paperqa_4k.jsonl", 4 if quick else caps.bamboo_items)
    sets.append(EvalSet("BAMBOO paperqa_4k", "tuning", paper, f"{skipped} items skipped"))
    if quick:
        return sets

    all_ids = [r["sample_id"] for r in json.loads((data / "locomo" / "locomo10.json").read_text())]
    held = [s for s in all_ids if s not in LOCOMO_TUNING][: caps.locomo_held_out]
    sets.append(
        EvalSet(
            "LoCoMo",
            "held-out",
            locomo(data / "locomo" / "locomo10.json", held.__contains__),
            ", ".join(held),
        )
    )
    for source in ("natural_question", "multidoc_qa"):
        sets.append(leval_set(source, "held-out", caps.leval_documents))
    choice = EvalSet("L-Eval multiple choice", "held-out", note="quality, coursera, tpo")
    for source in ("quality", "coursera", "tpo"):
        found = leval(leval_folder, source, max_documents=caps.leval_choice_documents)
        choice.documents += [replace(d, dataset="L-Eval multiple choice") for d in found.documents]
    sets.append(choice)
    for name in ("meetingqa_4k", "paperqa_16k"):
        found_docs, skipped = bamboo(data / "bamboo" / f"{name}.jsonl", caps.bamboo_items)
        sets.append(EvalSet(f"BAMBOO {name}", "held-out", found_docs, f"{skipped} items skipped"))
    alt, skipped = altqa(data / "bamboo" / "altqa_4k.jsonl", caps.bamboo_items)
    sets.append(EvalSet("BAMBOO altqa_4k", "held-out", alt, f"{skipped} items skipped"))
    example, skipped = quality_example(data / "quality-example" / "quality_example.jsonl")
    note = f"{skipped} questions, none with its gold option verbatim in the article"
    sets.append(EvalSet("QuALITY example", "held-out", example, note))
    return sets
