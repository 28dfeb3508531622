"""A next-item recommender: item table -> sequence encoder -> L2-normalised states.

The encoder is HSTU or SASRec; everything around it (item embeddings in a
TorchRec table, learned positions, dropout, normalisation, loss) is shared,
so the two are compared like for like. Works on jagged batches throughout:
``values`` (total,) item ids and ``offsets`` (B + 1,).

Optional target-aware ranking head (``model.ranking_head``), scored in the spirit of
HSTU's M-FALCON: a candidate is appended to the history as one more token that
attends to the history and to itself, never to other candidates; a small MLP turns
its final state into a score. The history is encoded once (``history_cache``) and
candidates are scored in micro-batches against its cached per-block keys and values
(``score_candidates``); ``score_candidates_naive`` is the reference, one full
``encode`` per candidate. Training adds a listwise loss over the last item against
negatives, each appended to the rest of its sequence (``_ranking_loss``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import in_batch_softmax_loss, sampled_softmax_loss
from .embeddings import ItemEmbeddings
from .history import HistoryCache
from .hstu import HSTUEncoder
from .sasrec import SASRecEncoder

ENCODERS = {"hstu": HSTUEncoder, "sasrec": SASRecEncoder}


def _positions(offsets: torch.Tensor) -> torch.Tensor:
    """0-based position of every jagged element within its own sequence."""
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    return torch.arange(int(offsets[-1]), device=offsets.device) - offsets[rows]


def _drop_last(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of every element but each sequence's last, and the new offsets."""
    lengths = (offsets[1:] - offsets[:-1]).clamp(min=1) - 1
    new_offsets = torch.zeros_like(offsets)
    new_offsets[1:] = torch.cumsum(lengths, 0)
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    keep = (
        offsets[rows]
        + torch.arange(int(new_offsets[-1]), device=offsets.device)
        - new_offsets[rows]
    )
    return keep, new_offsets


def _other_rows(batch: int, count: int, device) -> torch.Tensor:
    """(B, min(count, B - 1)): for row b, rows b + 1, b + 2, ... (wrapping), never b itself."""
    columns = torch.arange(min(count, max(batch - 1, 0)), device=device)
    return (torch.arange(batch, device=device)[:, None] + 1 + columns[None, :]) % batch


class SequentialRecommender(nn.Module):
    def __init__(self, config, num_item_ids: int, max_seq_len: int, temperature: float = 0.05):
        super().__init__()
        self.config = config
        self.temperature = temperature
        self.max_seq_len = max_seq_len
        dim = config.embedding_dim
        self.item_embeddings = ItemEmbeddings(num_item_ids, dim)
        self.position_embeddings = nn.Embedding(max_seq_len, dim)
        nn.init.trunc_normal_(self.position_embeddings.weight, std=math.sqrt(1.0 / dim))
        self.encoder = ENCODERS[config.family](config, max_seq_len)
        # Created last, so that models without it initialise exactly as before.
        self.ranking_head = (
            nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
            if config.ranking_head
            else None
        )

    # ------------------------------------------------------------------ encoding

    def _inputs(self, vectors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Raw item vectors (..., d) at their positions -> encoder inputs."""
        x = vectors * math.sqrt(vectors.shape[-1]) + self.position_embeddings(positions)
        return F.dropout(x, self.config.dropout, self.training)

    def _sequence_inputs(self, embedded: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self._inputs(embedded, _positions(offsets).clamp(max=self.max_seq_len - 1))

    def encode(
        self, embedded: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        """Raw item vectors (total, d) of the input sequences -> normalised states (total, d)."""
        x = self._sequence_inputs(embedded, offsets)
        return F.normalize(self.encoder(x, offsets, timestamps), dim=-1, eps=1e-6)

    def _encode_with_history(
        self, embedded: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> tuple[torch.Tensor, HistoryCache]:
        """``encode``, plus the cache of these sequences as histories of appended candidates."""
        x = self._sequence_inputs(embedded, offsets)
        out, history = self.encoder.encode_history(x, offsets, timestamps)
        if not self.encoder.history_matches_forward:  # HSTU "length": n is L + 1 there, L here
            out = self.encoder(x, offsets, timestamps)
        return F.normalize(out, dim=-1, eps=1e-6), history

    def user_vectors(
        self, item_ids: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, d): the state after each sequence's last item (what predicts the next one)."""
        states = self.encode(self.item_embeddings.lookup(item_ids), offsets, timestamps)
        return states[offsets[1:] - 1]

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_embeddings.lookup(ids), dim=-1, eps=1e-6)

    # ------------------------------------------------------------------ training

    def forward(
        self,
        item_ids: torch.Tensor,
        offsets: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        negative_ids: torch.Tensor | None = None,
        log_item_probability: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Autoregressive loss: every position predicts the next item of its sequence.

        ``negative_ids``: (P, N) per predicting position, or (N,) shared by the
        batch, for the sampled softmax; None selects the in-batch softmax.
        """
        num_items = item_ids.numel()
        # One lookup for inputs and negatives: one collective round when sharded.
        lookup_ids = (
            item_ids if negative_ids is None else torch.cat([item_ids, negative_ids.reshape(-1)])
        )
        embedded = self.item_embeddings.lookup(lookup_ids)
        sequence_vectors = embedded[:num_items]

        inputs, input_offsets = _drop_last(offsets)
        targets = inputs + 1  # the next element of the same sequence
        input_times = None if timestamps is None else timestamps[inputs]
        history = None  # with a ranking head: the inputs as histories of appended candidates
        if self.ranking_head is None:
            states = self.encode(sequence_vectors[inputs], input_offsets, input_times)
        else:
            states, history = self._encode_with_history(
                sequence_vectors[inputs], input_offsets, input_times
            )
        positives = F.normalize(sequence_vectors[targets], dim=-1, eps=1e-6)
        positive_ids = item_ids[targets]
        temperature = self.temperature
        negative_vectors = None
        if negative_ids is None:
            loss = in_batch_softmax_loss(
                states, positives, positive_ids, temperature, log_item_probability
            )
        else:
            shape = (*negative_ids.shape, -1)
            negative_vectors = embedded[num_items:].view(shape)  # raw: ranking-loss candidates
            negatives = F.normalize(embedded[num_items:], dim=-1, eps=1e-6).view(shape)
            loss = sampled_softmax_loss(
                states, positives, positive_ids, negatives, negative_ids, temperature
            )
        if history is not None:
            ranking_loss = self._ranking_loss(
                history,
                item_ids,
                sequence_vectors,
                offsets,
                timestamps,
                negative_ids,
                negative_vectors,
            )
            loss = loss + self.config.ranking_weight * ranking_loss
        return loss

    # ------------------------------------------------------------------ target-aware ranking

    @property
    def has_ranking_head(self) -> bool:
        return self.ranking_head is not None

    def _candidate_scores(
        self, history: HistoryCache, vectors: torch.Tensor, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        """Raw vectors (B, C, d) of candidates appended to B histories -> head scores (B, C)."""
        positions = history.lengths.clamp(max=self.max_seq_len - 1)
        x = self._inputs(vectors, positions[:, None])
        out = self.encoder.attend_candidates(x, history, timestamps)
        return self.ranking_head(F.normalize(out, dim=-1, eps=1e-6)).squeeze(-1)

    def _ranking_loss(
        self,
        history: HistoryCache,
        item_ids: torch.Tensor,
        sequence_vectors: torch.Tensor,
        offsets: torch.Tensor,
        timestamps: torch.Tensor | None,
        negative_ids: torch.Tensor | None,
        negative_vectors: torch.Tensor | None,
    ) -> torch.Tensor:
        """Listwise softmax: each sequence's last item against negatives, all appended to the rest.

        Negatives: the first ``ranking_negatives`` sampled ones (the batch's shared set, or
        the set of the sequence's last predicting position); with the in-batch loss, the
        last items of the next sequences of the batch. A negative equal to the positive is
        masked out. Sequences of one item have no history and are left out.
        Reuses the vectors forward looked up: no extra lookup (collective) when sharded.
        """
        last = offsets[1:] - 1
        batch, count = last.numel(), self.config.ranking_negatives
        if negative_ids is None:
            others = _other_rows(batch, count, last.device)
            negative_ids, negative_vectors = item_ids[last][others], sequence_vectors[last][others]
        elif negative_ids.dim() == 1:
            negative_ids = negative_ids[:count].expand(batch, -1)
            negative_vectors = negative_vectors[:count].expand(batch, -1, -1)
        else:
            # Row of each sequence's last predicting position (history lengths are its count).
            rows = (history.lengths.cumsum(0) - 1).clamp(min=0)
            negative_ids, negative_vectors = (
                negative_ids[rows, :count],
                negative_vectors[rows, :count],
            )
        candidate_ids = torch.cat([item_ids[last, None], negative_ids], dim=1)
        vectors = torch.cat([sequence_vectors[last, None], negative_vectors], dim=1)
        scores = self._candidate_scores(
            history, vectors, None if timestamps is None else timestamps[last]
        )
        clash = candidate_ids == candidate_ids[:, :1]
        clash[:, 0] = False
        scores = scores.masked_fill(clash, -torch.inf)
        targets = torch.zeros(batch, dtype=torch.long, device=scores.device)
        per_sequence = F.cross_entropy(scores, targets, reduction="none")
        keep = (history.lengths > 0).to(per_sequence.dtype)
        return (per_sequence * keep).sum() / keep.sum().clamp(min=1)

    def _check_ranking(self) -> None:
        if self.ranking_head is None:
            raise RuntimeError(
                "this model has no ranking head; train it with model.ranking_head=true"
            )
        if self.training:
            raise RuntimeError("candidate scoring is for inference: call model.eval() first")

    def _check_history(self, item_ids: torch.Tensor, timestamps: torch.Tensor | None) -> None:
        if item_ids.dim() != 1 or not 1 <= item_ids.numel() <= self.max_seq_len - 1:
            raise ValueError(
                f"history must be 1-D with 1 to max_seq_len - 1 = {self.max_seq_len - 1} items "
                f"(truncate to the most recent ones), got shape {tuple(item_ids.shape)}"
            )
        if timestamps is not None and timestamps.shape != item_ids.shape:
            raise ValueError(
                f"timestamps must match the history's shape {tuple(item_ids.shape)}, "
                f"got {tuple(timestamps.shape)}"
            )

    @staticmethod
    def _candidate_time(
        history_times: torch.Tensor | None, candidate_timestamp: int | None
    ) -> torch.Tensor | None:
        """(1,) time of the candidates: as given, else the history's last; None without times."""
        if history_times is None:
            if candidate_timestamp is not None:
                raise ValueError("candidate_timestamp needs a history with timestamps")
            return None
        if candidate_timestamp is None:
            return history_times[-1:]
        return torch.tensor([candidate_timestamp], device=history_times.device)

    @torch.no_grad()
    def history_cache(
        self, item_ids: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> HistoryCache:
        """Encode one user's history once, for ``score_candidates``.

        ``item_ids`` (L,) oldest first, 1 <= L <= max_seq_len - 1 (the caller keeps the
        most recent items); ``timestamps`` (L,) or None. Eval mode only.
        """
        self._check_ranking()
        self._check_history(item_ids, timestamps)
        offsets = torch.tensor([0, item_ids.numel()], device=item_ids.device)
        x = self._sequence_inputs(self.item_embeddings.lookup(item_ids), offsets)
        return self.encoder.encode_history(x, offsets, timestamps)[1]

    @torch.no_grad()
    def score_candidates(
        self,
        cache: HistoryCache,
        candidate_ids: torch.Tensor,
        candidate_timestamp: int | None = None,
        micro_batch: int = 256,
    ) -> torch.Tensor:
        """(M,) ranking-head scores of candidates, each appended alone to the cached history.

        Equals ``score_candidates_naive`` to float tolerance. Candidates are looked up
        once, then scored ``micro_batch`` at a time against the cache.
        ``candidate_timestamp``: when the history has timestamps, the time at which the
        candidates would be consumed; None: the history's last timestamp.
        """
        self._check_ranking()
        if cache.lengths.numel() != 1:
            raise ValueError(f"the cache must hold one user, got {cache.lengths.numel()}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        history_times = None
        if cache.timestamps is not None:
            history_times = cache.timestamps[0, : int(cache.lengths[0])]
        timestamp = self._candidate_time(history_times, candidate_timestamp)
        vectors = self.item_embeddings.lookup(candidate_ids)
        scores = [
            self._candidate_scores(cache, chunk[None], timestamp)[0]
            for chunk in vectors.split(micro_batch)
        ]
        return torch.cat(scores)

    @torch.no_grad()
    def score_candidates_naive(
        self,
        item_ids: torch.Tensor,
        candidate_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        candidate_timestamp: int | None = None,
    ) -> torch.Tensor:
        """Reference for ``score_candidates``: each candidate appended alone to the history,
        the (L + 1)-long sequence run through the ordinary causal ``encode``, its last
        state -> head. Same arguments and result; slow (M full encodes)."""
        self._check_ranking()
        self._check_history(item_ids, timestamps)
        length, count = item_ids.numel(), candidate_ids.numel()
        sequences = torch.cat([item_ids.expand(count, length), candidate_ids[:, None]], dim=1)
        offsets = torch.arange(count + 1, device=item_ids.device) * (length + 1)
        times = self._candidate_time(timestamps, candidate_timestamp)
        if times is not None:
            times = torch.cat([timestamps.expand(count, length), times.expand(count, 1)], dim=1)
            times = times.flatten()
        states = self.encode(self.item_embeddings.lookup(sequences.flatten()), offsets, times)
        return self.ranking_head(states[offsets[1:] - 1]).squeeze(-1)
