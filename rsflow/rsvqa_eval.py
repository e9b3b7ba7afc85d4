"""The RSVQA benchmark harness: every question of a split through the `rsflow ask` pipeline, per ablation.

Ablations, each asked of every question with the same store and models:
    llm         the LLM alone: the question, no image evidence
    retrieval   with the texts of the FAISS neighbours and the surrounding cells
    prefix      with the flow's K prefix vectors
    both        with retrieval and prefix (what `rsflow ask` does)
    candidates  no generation: the candidate answer whose prior the flow finds most likely

A generated answer is mapped to the benchmark's vocabulary by `rsflow.rsvqa.map_free_answer` and
both sides are normalized by `rsflow.rsvqa.normalize_answer`, as `rsflow.rsvqa.score` does.
Counts are scored in the authors' bins for the low-resolution set (their training script bins LR
counts) and exactly for the high-resolution set, unless `count_bins` says otherwise.

Every answer is appended to a JSON Lines cache as soon as it exists, so an interrupted evaluation
resumes where it stopped and asks nothing twice. Each image is read and embedded once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rsflow.ask import AskOptions, Asker, ImageQuery
from rsflow.rsvqa import AREA_BINS, COUNT_BINS, RsvqaDataset, load_rsvqa, map_free_answer, score

logger = logging.getLogger(__name__)

ABLATIONS = ("llm", "retrieval", "prefix", "both", "candidates")
NEEDS_FLOW = ("prefix", "both", "candidates")
EXACT_COUNT_CANDIDATES = tuple(str(n) for n in range(0, 31))


@dataclass
class EvalSettings:
    """The settings of `evaluate_rsvqa`: split, question limit, ablations, count scoring, asking options."""

    split: str | None = "test"
    limit: int | None = None
    ablations: tuple[str, ...] = ABLATIONS
    count_bins: bool | None = None  # None: bins for LR, exact for HR
    chip_size: int | None = None
    top_k: int = 5
    context_texts: int = 5
    max_new_tokens: int = 16


def default_cache(store_path: Path, dataset: RsvqaDataset) -> Path:
    return store_path / "eval" / f"rsvqa-{dataset.dataset.lower()}-{dataset.split}.jsonl"


def evaluate_rsvqa(
    asker: Asker,
    dataset_dir: str | Path,
    settings: EvalSettings,
    *,
    cache: Path | None = None,
    progress: Callable[[str, dict], None] | None = None,
) -> dict:
    """Ask every question of the split for each ablation and score the answers; see the module docstring."""
    progress = progress or (lambda event, data: None)
    dataset = load_rsvqa(dataset_dir, settings.split)
    questions = sorted(dataset.questions, key=lambda q: (q.image_id, q.id))[: settings.limit]
    ablations = _usable_ablations(asker, settings.ablations)
    count_bins = settings.count_bins if settings.count_bins is not None else dataset.dataset == "LR"

    cache = cache or default_cache(asker.store.path, dataset)
    answers = _read_cache(cache)
    warnings = _leak_warnings(asker, dataset, questions)
    progress("start", {"questions": len(questions), "ablations": ablations, "cached": len(answers)})

    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a") as out:
        current_image, query, neighbours, location = None, None, [], None
        for question in questions:
            todo = [a for a in ablations if (question.id, a) not in answers]
            if todo and question.image_id != current_image:
                current_image = question.image_id
                query, neighbours, location = _image_evidence(asker, dataset, question.image_id, settings)
            for ablation in todo:
                record = _answer(asker, question, ablation, query, neighbours, location, settings, count_bins)
                answers[(question.id, ablation)] = record
                out.write(json.dumps(record) + "\n")
                out.flush()
            progress("question", {"id": question.id})

    report = _score(answers, questions, ablations, dataset.dataset, count_bins)
    report.update({
        "dataset": dataset.dataset, "split": dataset.split, "layout": dataset.layout, "root": str(dataset.root),
        "questions": len(questions), "count_bins": count_bins, "cache": str(cache), "warnings": warnings,
        "models": asker.model_ids(),
    })
    return report


def _usable_ablations(asker: Asker, requested: tuple[str, ...]) -> list[str]:
    unknown = [a for a in requested if a not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation {unknown[0]!r}; choose from {', '.join(ABLATIONS)}.")
    if asker.flow is None:
        skipped = [a for a in requested if a in NEEDS_FLOW]
        if skipped:
            logger.warning("the store has no trained flow, so these ablations are left out: %s", ", ".join(skipped))
        return [a for a in requested if a not in NEEDS_FLOW]
    return list(requested)


def _read_cache(cache: Path) -> dict[tuple[int, str], dict]:
    answers: dict[tuple[int, str], dict] = {}
    if not cache.is_file():
        return answers
    for number, line in enumerate(cache.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            answers[(int(record["question_id"]), record["ablation"])] = record
        except (json.JSONDecodeError, KeyError, ValueError):
            # The last line of a killed run can be cut off; it is asked again.
            logger.warning("%s:%d: cached answer is unreadable; the question will be asked again", cache, number)
    return answers


def _leak_warnings(asker: Asker, dataset: RsvqaDataset, questions) -> list[str]:
    """Return a warning when the store contains question-answer texts of the evaluated images, which retrieval would read."""
    import pyarrow.compute as pc

    if not asker.store.has_table("texts"):
        return []
    images = sorted({str(dataset.images[q.image_id].path) for q in questions})
    texts = asker.store.table("texts").to_lance().to_table(
        columns=["image_ref"], filter=(pc.field("kind") == "question-answer") & pc.field("image_ref").isin(images)
    )
    if texts.num_rows == 0:
        return []
    message = (
        f"the store holds {texts.num_rows} question-answer texts of the evaluated images, so retrieval can read "
        "the reference answers; ingest the training split only."
    )
    return [message]


def _image_evidence(asker: Asker, dataset: RsvqaDataset, image_id: int, settings: EvalSettings):
    image = dataset.images[image_id]
    georef = image.georef() if image.upper_left is not None else None
    options = AskOptions(chip_size=settings.chip_size, georef=georef)
    query = asker.embed_image(image.path, options)
    neighbours = asker.neighbours(query.embedding, settings.top_k)
    return query, neighbours, asker.location(query)


def _answer(asker: Asker, question, ablation: str, query: ImageQuery, neighbours, location,
            settings: EvalSettings, count_bins: bool) -> dict:
    record = {"question_id": question.id, "ablation": ablation, "type": question.type}
    if ablation == "candidates":
        candidates = _type_candidates(question.type, count_bins)
        scored = asker.score_answers(question.question, query, candidates)
        record["generated"] = scored[0]["answer"]
        record["prediction"] = scored[0]["answer"]
        return record

    context = []
    if ablation in ("retrieval", "both"):
        context = [c["text"] for c in asker.context(question.question, neighbours, location, settings.context_texts)]
    prefix = asker.prefix(query) if ablation in ("prefix", "both") else None
    generated = asker.llm.generate(question.question, context, prefix=prefix, max_new_tokens=settings.max_new_tokens)
    record["generated"] = generated
    record["prediction"] = map_free_answer(generated, question.type)
    return record


def _type_candidates(question_type: str, count_bins: bool) -> list[str]:
    if question_type in ("presence", "comp"):
        return ["yes", "no"]
    if question_type == "rural_urban":
        return ["rural", "urban"]
    if question_type == "count":
        return list(COUNT_BINS if count_bins else EXACT_COUNT_CANDIDATES)
    if question_type == "area":
        return list(AREA_BINS)
    raise ValueError(f"unknown RSVQA question type {question_type!r}")


def _score(answers, questions, ablations, dataset: str, count_bins: bool) -> dict:
    references = [q.answer for q in questions]
    types = [q.type for q in questions]
    results = {}
    for ablation in ablations:
        predictions = [answers[(q.id, ablation)]["prediction"] for q in questions]
        results[ablation] = score(predictions, references, types, dataset=dataset, count_bins=count_bins)
    return {"results": results}


def format_report(report: dict) -> str:
    """Render the per-type, average and overall accuracies of each ablation as a markdown table."""
    results = report["results"]
    types = list(next(iter(results.values()))["per_type"]) if results else []
    header = "| ablation | " + " | ".join(types) + " | AA | OA |"
    lines = [
        f"RSVQA {report['dataset']} {report['split']}: {report['questions']} questions; counts "
        f"{'in bins' if report['count_bins'] else 'exact'}. Accuracy in %.",
        "",
        header,
        "|" + " --- |" * (len(types) + 3),
    ]
    for ablation, result in results.items():
        cells = [f"{100 * result['per_type'][t]['accuracy']:.2f}" for t in types]
        lines.append(
            f"| {ablation} | " + " | ".join(cells)
            + f" | {100 * result['average_accuracy']:.2f} | {100 * result['overall_accuracy']:.2f} |"
        )
    return "\n".join(lines)
