"""Ray Data engine: the same parts as the local engine, run by model-holding actors.

The driver plans the pending parts from the Parquet/IPC metadata (row counts are known without
reading), turns them into a Ray dataset, and `map_batches` sends each part to an actor class
that loads the model once (`IngestActor.__init__`) and runs the local part code: it reads its
input rows [start, end) with pyarrow (whole row groups skipped by metadata), embeds, and writes
`part-NNNNNN.parquet` atomically. The driver streams the results back and commits each to the
manifest, so the output is the local engine's, byte for byte in rows and vectors, and a killed
Ray job resumes like a local one.

We do not use `ray.data.read_parquet`/`write_parquet` for the rows themselves: they cannot give
the global row number the default ids need, nor atomic part files tied to a resume manifest.

Multi-node: every node must see the model path, the inputs and the output directory at the same
paths (a shared filesystem); the cache is per node (its SQLite file under the node's cache dir).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.pipeline.config import IngestConfig
from embedpipe.pipeline.manifest import Manifest
from embedpipe.pipeline.processor import Stats
from embedpipe.pipeline.readers import Corpus


class IngestActor:
    """Loads the model once; each call runs whole parts and returns their manifest records."""

    def __init__(self, cfg: dict):
        from embedpipe.pipeline.job import open_processor
        from embedpipe.runtime.embedder import Embedder

        self.cfg = IngestConfig(**cfg)
        emb = Embedder.load(self.cfg.model, backend=self.cfg.backend, threads=self.cfg.threads)
        self.corpus = Corpus.open(self.cfg.inputs, self.cfg.source_columns())
        self.processor = open_processor(self.cfg, emb, self.corpus)

    def __call__(self, batch: dict) -> dict:
        from embedpipe.pipeline.parts import RowFeeder, run_part

        out = {"result": []}
        size = self.cfg.part_rows
        for index in batch["index"].tolist():
            feeder = RowFeeder(
                self.corpus.batches(self.cfg.source_columns(), start=index * size, rows=self.cfg.read_rows)
            )
            result = run_part(self.processor, Path(self.cfg.output), index, index * size, feeder, size)
            out["result"].append(json.dumps({"record": result.record, "skipped": result.skipped}))
        return out


def _map_batches(ds, actors: int, cpus_per_actor: float, cfg: dict):
    """map_batches with an actor pool, across Ray versions (`concurrency=` since 2.9, `compute=` before)."""
    kwargs = dict(fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="numpy", num_cpus=cpus_per_actor)
    try:
        return ds.map_batches(IngestActor, concurrency=actors, **kwargs)
    except TypeError:
        from ray.data import ActorPoolStrategy

        return ds.map_batches(IngestActor, compute=ActorPoolStrategy(size=actors), **kwargs)


def run_ray(
    cfg: IngestConfig, corpus: Corpus, manifest: Manifest, on_window: Callable[[Stats], None] | None = None
) -> None:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ArgumentError(
            "engine", "{engine} needs the ray extra: pip install 'embedpipe[ray]'", values={"engine": "ray"}
        ) from exc
    total = corpus.total_rows()
    if total is None:
        raise EmbedpipeError(
            "--engine ray needs inputs with known row counts (Parquet or Arrow IPC files); "
            "convert JSONL/CSV first or use --engine local"
        )
    pending = [i for i in range(max(1, math.ceil(total / cfg.part_rows))) if i not in manifest.parts]
    if not pending:
        return
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(
            address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False
        ) if address else ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    threads = cfg.threads or 1
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = cfg.ray_actors or max(1, cpus // threads)
    actors = min(actors, len(pending))
    conf = asdict(cfg) | {
        "inputs": [str(s.path) for s in corpus.sources],
        "output": str(Path(cfg.output).resolve()),
        "model": str(Path(cfg.model).resolve()) if cfg.model else None,
        "progress": False,
        "threads": threads,
        "engine": "local",
    }
    ds = ray.data.from_items([{"index": i} for i in pending], override_num_blocks=len(pending))
    for row in _map_batches(ds, actors, float(threads), conf).iter_rows():
        data = json.loads(row["result"])
        manifest.commit(data["record"], data["skipped"])
        if on_window is not None:
            on_window(Stats.from_dict(data["record"]))
