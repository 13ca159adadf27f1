"""Similarity to the row's reference replies: BLEU and chrF (sacrebleu), ROUGE-1/2/L (rouge-score).

Per-sample scores are on a 0..1 scale (sacrebleu's 0..100 divided by 100; ROUGE's F-measure,
precision or recall as configured). With several references a sample gets sacrebleu's
multi-reference score, or for ROUGE the reference with the best F-measure, as
``RougeScorer.score_multi`` defines it. A sample without a reference is unscorable
(``no_reference``).

:func:`corpus_similarity` is the evaluation form: corpus BLEU and chrF over all samples (the
figure papers report), and the mean ROUGE F-measure.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.rewards.base import LocalSource, ResultBuilder, ScoreRequest, SourceResult

METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")
ROUGE_MEASURES = ("fmeasure", "precision", "recall")


class SentenceScorer:
    """One metric of one completion against its references, 0..1."""

    def __init__(self, metric: str, rouge_measure: str = "fmeasure", use_stemmer: bool = False, lowercase: bool = False):
        if metric not in METRICS:
            raise ValueError(f"similarity metric {metric!r} is unknown; choose one of {list(METRICS)}")
        self.metric, self.measure = metric, rouge_measure
        if metric == "bleu":
            from sacrebleu.metrics import BLEU

            # Sentence BLEU needs effective order: short replies have no 4-gram matches.
            self._scorer = BLEU(effective_order=True, lowercase=lowercase)
        elif metric == "chrf":
            from sacrebleu.metrics import CHRF

            self._scorer = CHRF(lowercase=lowercase)
        else:
            from rouge_score import rouge_scorer

            # rouge-score lowercases in its own tokenizer.
            self._scorer = rouge_scorer.RougeScorer([metric], use_stemmer=use_stemmer)

    def __call__(self, completion: str, references: list[str]) -> float:
        if self.metric in ("bleu", "chrf"):
            return self._scorer.sentence_score(completion, list(references)).score / 100.0
        best = self._scorer.score_multi(list(references), completion)[self.metric]
        return float(getattr(best, self.measure))


class SimilaritySource(LocalSource):
    """``kind: similarity``."""

    kind = "similarity"

    def __init__(self, spec):
        super().__init__(spec.name, spec.weight)
        self.scorer = SentenceScorer(spec.metric, spec.rouge_measure, spec.use_stemmer, spec.lowercase)

    def score_batch(self, request: ScoreRequest) -> SourceResult:
        out = ResultBuilder(len(request))
        for i, (completion, refs) in enumerate(zip(request.completions, request.references)):
            refs = [r for r in refs if isinstance(r, str)]
            if not refs:
                out.fail(i, "no_reference", "has no reference reply")
                continue
            out.set(i, self.scorer(completion, refs))
        return out.result(0.0)


def _reference_streams(references: list[list[str]]) -> list[list[Optional[str]]]:
    """sacrebleu's layout: one stream per reference position, None where a sample has fewer."""
    depth = max(len(r) for r in references)
    return [[r[k] if k < len(r) else None for r in references] for k in range(depth)]


def corpus_similarity(completions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU and chrF (0..100, sacrebleu's scale) and mean ROUGE-1/2/L F-measure (0..1)
    over the samples that have references; ``{}`` when none has."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    keep = [i for i, refs in enumerate(references) if refs]
    if not keep:
        return {}
    hyps = [completions[i] for i in keep]
    refs = [list(references[i]) for i in keep]
    streams = _reference_streams(refs)
    out = {
        "bleu": float(BLEU().corpus_score(hyps, streams).score),
        "chrf": float(CHRF().corpus_score(hyps, streams).score),
    }
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rows = [scorer.score_multi(r, h) for h, r in zip(hyps, refs)]
    for name in ("rouge1", "rouge2", "rougeL"):
        out[name] = float(np.mean([row[name].fmeasure for row in rows]))
    out["samples_with_references"] = float(len(keep))
    return out
