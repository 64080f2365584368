"""The prefix-shared packed layout of the training passes (pure numpy; DESIGN.md "Packed training layout").

A group is one prompt and its G replies, laid out once: prompt, reply 0, ..., reply G-1. Reply j sees the prompt
and its own earlier tokens only, and its positions continue from the prompt's length, so each reply computes
exactly what it would right after its prompt in the padded layout (`sequences.pack`). Whole groups are packed into
rows of one length L (first-fit decreasing; L = the token budget, or the longest group when that is longer). Every
size is bucketed (`shapes.ladder`): rows, L, slots S and reply width R each take a few values however lengths vary,
so a run compiles a handful of programs; padding rows and slots are fully masked (segment 0, sample -1, mask 0):

- tokens, positions [rows, L] int32;
- segment_ids [rows, L]: 1 + the group's index in its row; 0 on padding;
- prefix_ids [rows, L]: 0 on prompt tokens, j + 1 on reply j, -1 on padding (padding sees only padding).

Log-probs are read at reply tokens only, in a per-row "slot" layout [rows, S, R] (slot = one reply, R = reply
width): `predict[r, s, t]` is the column whose hidden state predicts reply token t of slot s (the prompt's last
token for t = 0, shared by the group's G replies; the previous column otherwise), `targets` the token and
`response_mask` 1 on real reply tokens. `sample[r, s]` is the index of the slot's reply in the input order (-1 for
an empty slot). Everything in a row stays in that row, so a row-sharded batch needs no cross-device gather.
SFT packs examples as groups of one reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tooln1_jax import shapes

ROW_QUANTUM = 128  # row lengths are rungs of shapes.ladder in multiples of this
REPLY_QUANTUM = 16  # reply widths are powers of two times this


@dataclasses.dataclass
class PackedGroups:
    tokens: np.ndarray  # int32 [rows, L]
    positions: np.ndarray  # int32 [rows, L]
    segment_ids: np.ndarray  # int32 [rows, L]
    prefix_ids: np.ndarray  # int32 [rows, L]
    predict: np.ndarray  # int32 [rows, S, R]
    targets: np.ndarray  # int32 [rows, S, R]
    response_mask: np.ndarray  # float32 [rows, S, R]
    sample: np.ndarray  # int32 [rows, S]
    num_samples: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(rows, L, S, R)."""
        return (*self.tokens.shape, *self.targets.shape[1:])

    @property
    def useful_tokens(self) -> int:
        """Prompt tokens once per group + reply tokens."""
        return int((self.segment_ids > 0).sum())

    @property
    def computed_tokens(self) -> int:
        return int(self.tokens.size)

    def per_slot(self, values: np.ndarray) -> np.ndarray:
        """Per-sample values [num_samples, ...] -> [rows, S, ...] (zeros in empty slots)."""
        values = np.asarray(values)
        if values.shape[0] != self.num_samples:
            raise ValueError(f"per_slot: {values.shape[0]} values for {self.num_samples} samples")
        out = np.zeros(self.sample.shape + values.shape[1:], values.dtype)
        filled = self.sample >= 0
        out[filled] = values[self.sample[filled]]
        return out

    def to_samples(self, slab: np.ndarray) -> np.ndarray:
        """[rows, S, ...] -> [num_samples, ...] in the input order (inverse of `per_slot`)."""
        slab = np.asarray(slab)
        out = np.zeros((self.num_samples,) + slab.shape[2:], slab.dtype)
        filled = self.sample >= 0
        out[self.sample[filled]] = slab[filled]
        return out

    def pad_to(self, rows: int, length: int, slots: int, reply: int) -> PackedGroups:
        """The same layout in a larger shape (so that every host's batch has one shape)."""
        if any(new < old for new, old in zip((rows, length, slots, reply), self.shape)):
            raise ValueError(f"pad_to{(rows, length, slots, reply)} is smaller than {self.shape}")

        def grow(name: str, *size: int) -> np.ndarray:  # the padding is masked: -1 in prefix_ids and sample, else 0
            x = getattr(self, name)
            fill = -1 if name in ("prefix_ids", "sample") else 0
            return np.pad(x, [(0, new - old) for new, old in zip(size, x.shape)], constant_values=fill)

        return PackedGroups(**{k: grow(k, rows, length) for k in ("tokens", "positions", "segment_ids", "prefix_ids")},
                            **{k: grow(k, rows, slots, reply) for k in ("predict", "targets", "response_mask")},
                            sample=grow("sample", rows, slots), num_samples=self.num_samples)


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def plan_rows(lengths: Sequence[int], budget: int, max_length: int | None = None) -> tuple[list[list[int]], int]:
    """Groups of `lengths` assigned to rows (first-fit decreasing) of length L = the rung of `shapes.ladder` (in
    ROW_QUANTUM units) that holds max(budget, longest group), at most max(budget, `max_length`) (`max_length`: the
    longest group a run can have). L is the budget's whatever the batch, unless a group is longer: a row length
    that follows each batch's total would be a new program for nearly every batch. budget 0: rows as long as the
    longest group's rung."""
    if not lengths:
        raise ValueError("plan_rows: no groups")
    top = None if max_length is None else max(budget, max_length)
    length = shapes.ladder(max(budget, *lengths), ROW_QUANTUM, top)
    return _first_fit_decreasing(lengths, length), length


def reply_width_for(longest_reply: int, max_reply: int | None = None) -> int:
    """The slot width R for replies of at most `longest_reply` tokens: REPLY_QUANTUM x 2^k, at most `max_reply`
    (the reply cap) rounded up to the quantum."""
    return shapes.ladder(longest_reply, REPLY_QUANTUM, max_reply, half_steps=False)


def layout_metrics(computed: int, useful: float) -> dict[str, float]:
    """Computed token positions per useful token (prompts once per group + replies) and the share of positions
    that hold no token, of a step's training passes."""
    return {"layout/computed_per_useful": computed / max(useful, 1),
            "layout/padding_frac": 1.0 - useful / max(computed, 1)}


def layout(lengths: Sequence[int], group_sizes: Sequence[int], *, budget: int = 0, rows_multiple: int = 1,
           max_length: int | None = None) -> tuple[list[list[int]], int, int, int]:
    """(groups of each row, rows, L, S) for groups of these token lengths and reply counts: rows from `plan_rows`
    padded to a rung of multiples of `rows_multiple` (this host's share of the batch axes), at most one per group
    (rounded up); S the most replies in a row rounded up to the largest group size x 2^k, at most all of them."""
    assignment, length = plan_rows(lengths, budget, max_length)
    slots = shapes.ladder(max(sum(group_sizes[g] for g in row) for row in assignment), max(1, max(group_sizes)),
                          sum(group_sizes), half_steps=False)
    return assignment, shapes.ladder(len(assignment), rows_multiple, len(lengths)), length, slots


def pack_groups(prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[Sequence[int]]], *, budget: int = 0,
                rows_multiple: int = 1, reply_width: int | None = None,
                max_length: int | None = None) -> PackedGroups:
    """Pack group g = prompts[g] + replies[g][0] + ... ; samples are numbered group by group, reply by reply (the
    rollout's order). Rows (a multiple of `rows_multiple`), row length and slots per row are bucketed (`layout`;
    `max_length`: the longest group a run can have); the reply width defaults to the bucketed longest reply
    (`reply_width_for`)."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} groups of replies")
    for g, prompt in enumerate(prompts):
        if not len(prompt):
            raise ValueError(f"group {g}: empty prompt")
    lengths = [len(p) + sum(map(len, rs)) for p, rs in zip(prompts, replies)]
    assignment, num_rows, length, slots = layout(lengths, [len(rs) for rs in replies], budget=budget,
                                                 rows_multiple=rows_multiple, max_length=max_length)
    longest_reply = max((len(r) for rs in replies for r in rs), default=1)
    width = reply_width or reply_width_for(longest_reply)
    if longest_reply > width:
        raise ValueError(f"a reply of {longest_reply} tokens exceeds the reply width {width}")
    first_sample = np.cumsum([0] + [len(rs) for rs in replies])

    tokens, positions, segment_ids = (np.zeros((num_rows, length), np.int32) for _ in range(3))
    prefix_ids = np.full((num_rows, length), -1, np.int32)
    predict, targets = (np.zeros((num_rows, slots, width), np.int32) for _ in range(2))
    response_mask = np.zeros((num_rows, slots, width), np.float32)
    sample = np.full((num_rows, slots), -1, np.int32)
    for r, row in enumerate(assignment):
        col, slot = 0, 0
        for seg, g in enumerate(sorted(row), start=1):
            p = len(prompts[g])
            last_prompt = col + p - 1
            for j, piece in enumerate([prompts[g], *replies[g]]):  # j = 0: the prompt; j > 0: reply j - 1
                n = len(piece)
                tokens[r, col:col + n] = piece
                positions[r, col:col + n] = (p if j else 0) + np.arange(n)
                segment_ids[r, col:col + n] = seg
                prefix_ids[r, col:col + n] = j
                if j:
                    predict[r, slot, :n] = np.concatenate([[last_prompt], col + np.arange(n - 1)])[:n]
                    targets[r, slot, :n] = piece
                    response_mask[r, slot, :n] = 1.0
                    sample[r, slot] = first_sample[g] + j - 1
                    slot += 1
                col += n
    return PackedGroups(tokens, positions, segment_ids, prefix_ids, predict, targets, response_mask, sample,
                        int(first_sample[-1]))
