"""The vectors of `embedpipe bench index`: real ones (`--vectors F.npy` or an ingest output
directory, Matryoshka-truncated by the caller) or a clearly labelled synthetic clustered set,
and the exact fp32 top-10 every recall figure is measured against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedpipe.indexes.base import normalize_rows

SYNTHETIC_BLOCK = 8192  # rows generated at a time: a whole float64 (n, d) chain would hold ~4 full-size temporaries


def synthetic_vectors(n: int, d: int, seed: int = 0, noise: float = 1.4) -> np.ndarray:
    """A stand-in for real embeddings, labelled as such in every output: a shared direction
    (embeddings are anisotropic), topics, sub-topics and per-row noise. With the default noise
    the mean top-1 / top-10 / median cosine of a held-out row is about 0.33 / 0.27 / 0.05.

    Generated in row blocks into one float32 array (1 M x 768 would otherwise peak at ~25 GB of
    float64 temporaries). The values are those of drawing the (n, d) noise and then the (n, 1)
    row scales in one call each: the noise stream is drawn twice, once only to reach the state
    the row scales are drawn from."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    topics = rng.standard_normal((max(8, n // 300), d))
    subs = rng.standard_normal((max(8, n // 30), d))
    topic_of = rng.integers(0, len(topics), len(subs))
    which = rng.integers(0, len(subs), n)
    noise_state = rng.bit_generator.state
    for lo in range(0, n, SYNTHETIC_BLOCK):
        rng.standard_normal((min(SYNTHETIC_BLOCK, n - lo), d))
    row_scale = rng.uniform(0.7, 1.3, (n, 1))
    rng.bit_generator.state = noise_state
    x = np.empty((n, d), np.float32)
    for lo in range(0, n, SYNTHETIC_BLOCK):
        hi = min(n, lo + SYNTHETIC_BLOCK)
        w = which[lo:hi]
        x[lo:hi] = (
            0.35 * common
            + 0.55 * topics[topic_of[w]]
            + 0.45 * subs[w]
            + noise * rng.standard_normal((hi - lo, d)) * row_scale[lo:hi]
        )
        x[lo:hi] = normalize_rows(x[lo:hi])
    return x


def load_vectors(vectors: str | None, n: int, d: int) -> tuple[np.ndarray, str]:
    if vectors is None:
        return synthetic_vectors(n, d), f"SYNTHETIC clustered vectors ({n}x{d}), not real embeddings"
    path = Path(vectors)
    if path.is_dir():
        from embedpipe.pipeline.dataset import read_embeddings

        x = read_embeddings(path, keep_text=False).vectors
    else:
        x = np.load(path, mmap_mode="r")
    x = normalize_rows(np.asarray(x[:n], np.float32))
    return x, f"{path} ({len(x)}x{x.shape[1]})"


def exact_top10(base: np.ndarray, q: np.ndarray) -> np.ndarray:
    from embedpipe.indexes.base import topk_desc

    out = np.empty((len(q), 10), np.int64)
    for lo in range(0, len(q), 100):
        out[lo : lo + 100] = topk_desc(q[lo : lo + 100] @ base.T, 10)[1]
    return out
