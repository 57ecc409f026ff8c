"""Length-sorted batches bounded by rows and by tokens.

Sorting a bounded window by length keeps similar lengths together (less wasted attention and,
for padding backends, less padding) while memory stays bounded by the window; the caller
scatters results back to input order.
"""

from __future__ import annotations

from collections.abc import Iterator


def length_batches(lengths: list[int], max_rows: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices of `lengths` grouped into batches: sorted by (length, index), at most `max_rows`
    sequences and at most `max_tokens` tokens counted as rows × longest (the padded size).
    A single sequence longer than `max_tokens` forms its own batch."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
        if batch and (len(batch) >= max_rows or (len(batch) + 1) * max(longest, n) > max_tokens):
            yield batch
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, n)
    if batch:
        yield batch
