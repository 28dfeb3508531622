"""What the endpoints compute, without Ray: top-k retrieval and candidate ranking.

    recommender = Recommender(load_bundle("runs/demo"))
    recommender.recommend([Query(history=[3, 17, 42], k=10)])
    recommender.rank([3, 17, 42], candidates=[5, 8, 13])

Item vectors are computed once per model, so a request costs one encoder pass
over its history plus one (1, d) x (d, items) product. Ranking uses the model's
target-aware head when it has one (history encoded once, candidates scored in
micro-batches against the cached keys/values, the M-FALCON scheme), else the
retrieval dot product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .loading import ModelBundle


class InvalidRequest(ValueError):
    """A request the model cannot answer (unknown ids, ...): a 4xx, never a crash."""


@dataclass
class Query:
    history: list[int]
    timestamps: list[int] | None = None
    k: int = 10
    exclude_history: bool = True


class Recommender:
    def __init__(self, bundle: ModelBundle, rank_micro_batch: int = 256):
        self.model = bundle.model.eval()
        self.config = bundle.config
        self.info = bundle.info
        self.rank_micro_batch = rank_micro_batch
        self.max_len = self.config.data.max_len
        self.num_item_ids = self.model.item_embeddings.num_item_ids
        # Timestamps matter only to an HSTU trained with its time bias; others ignore them.
        model_config = self.config.model
        self.uses_time = model_config.family == "hstu" and model_config.time_bias
        with torch.inference_mode():
            self.item_matrix = self.model.item_vectors(torch.arange(self.num_item_ids))
        self.blocked = torch.ones(self.num_item_ids, dtype=torch.bool)
        self.blocked[bundle.candidates] = False
        self.blocked[0] = True  # 0 is padding, never an item

    @property
    def version(self) -> str | None:
        return self.info.get("version")

    # ------------------------------------------------------------------ checks

    def check_ids(self, ids: list[int], field: str) -> None:
        values = np.asarray(ids, dtype=np.int64)
        unknown = values[(values < 1) | (values >= self.num_item_ids)]
        if unknown.size:
            shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if unknown.size > 10 else "")
            raise InvalidRequest(
                f"{field} has {unknown.size} unknown item id(s): {shown}; "
                f"this model knows ids 1..{self.num_item_ids - 1} (GET /model)"
            )

    def _recent(self, history, timestamps, keep: int):
        ids = torch.tensor(history[-keep:], dtype=torch.int64)
        times = None
        if timestamps is not None and self.uses_time:
            times = torch.tensor(timestamps[-keep:], dtype=torch.int64)
        return ids, times

    # ------------------------------------------------------------------ retrieval

    @torch.inference_mode()
    def recommend(self, queries: list[Query]) -> list[tuple[list[int], list[float]] | Exception]:
        """Top-k per query, batched into one encoder pass; bad queries get their error back."""
        results: list = [None] * len(queries)
        good = []
        for index, query in enumerate(queries):
            try:
                self.check_ids(query.history, "history")
                good.append(index)
            except InvalidRequest as error:
                results[index] = error
        if not good:
            return results
        recent = [
            self._recent(queries[i].history, queries[i].timestamps, self.max_len) for i in good
        ]
        # Time is used only if every query in the batch has it (a batch is one encoder call).
        with_time = all(times is not None for _, times in recent)
        lengths = torch.tensor([len(ids) for ids, _ in recent])
        offsets = torch.zeros(len(recent) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        values = torch.cat([ids for ids, _ in recent])
        timestamps = torch.cat([times for _, times in recent]) if with_time else None
        users = self.model.user_vectors(values, offsets, timestamps)
        logits = (users @ self.item_matrix.T).masked_fill(self.blocked, -math.inf)
        for row, index in enumerate(good):
            if queries[index].exclude_history:
                logits[row, torch.tensor(queries[index].history)] = -math.inf
        top = torch.topk(logits, min(max(queries[i].k for i in good), self.num_item_ids), dim=1)
        for row, index in enumerate(good):
            scores, items = (
                top.values[row, : queries[index].k],
                top.indices[row, : queries[index].k],
            )
            keep = torch.isfinite(scores)  # fewer than k recommendable items left
            results[index] = (items[keep].tolist(), scores[keep].tolist())
        return results

    # ------------------------------------------------------------------ ranking

    @torch.inference_mode()
    def rank(
        self,
        history: list[int],
        candidates: list[int],
        timestamps: list[int] | None = None,
        candidate_timestamp: int | None = None,
    ) -> tuple[list[float], str]:
        """A score per candidate, in order; and which method produced it."""
        self.check_ids(history, "history")
        self.check_ids(candidates, "candidates")
        candidate_ids = torch.tensor(candidates, dtype=torch.int64)
        if not getattr(self.model, "has_ranking_head", False):
            ids, times = self._recent(history, timestamps, self.max_len)
            offsets = torch.tensor([0, len(ids)])
            user = self.model.user_vectors(ids, offsets, times)[0]
            return (self.item_matrix[candidate_ids] @ user).tolist(), "retrieval"
        # One slot is kept for the candidate token itself.
        ids, times = self._recent(history, timestamps, self.max_len - 1)
        when = candidate_timestamp
        if times is None:
            when = None
        elif when is None:
            when = int(times[-1])
        cache = self.model.history_cache(ids, times)
        scores = self.model.score_candidates(
            cache, candidate_ids, candidate_timestamp=when, micro_batch=self.rank_micro_batch
        )
        return scores.tolist(), "target_aware"
