"""Where row scorers run: in this process, or as Ray Data class UDFs on an actor pool, or (`auto`,
the default) each map where it is faster.

Both engines feed the same scorer classes (damoc.data.scorers) the same column batches, in row
order, and return the outputs as numpy arrays in row order, so a filter selects the same rows on
either (tested). Ray Data adds what a cluster needs: one model load per actor
(`compute=ActorPoolStrategy(size=actors)`), CPUs/GPUs per actor as configuration, and streaming
through the object store instead of the driver's memory.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Optional, Sequence

import numpy as np

from damoc.log import progress

log = logging.getLogger("damoc.data")


def _columns(records: Sequence[dict], whole: bool = False) -> dict[str, np.ndarray]:
    """Column batches in order of text length, longest first (each row keeps its index): rows of
    similar length share a model batch, so little compute goes to padding, and an actor pool,
    which hands out calls in order, ends the stage on its shortest calls instead of waiting for
    one actor's long last call. Outputs are put back in row order."""
    order = sorted(range(len(records)), key=lambda i: -(len(records[i]["prompt"]) + len(records[i]["response"])))
    columns = {"index": np.array(order, dtype=np.int64),
               "prompt": np.array([records[i]["prompt"] for i in order], dtype=object),
               "response": np.array([records[i]["response"] for i in order], dtype=object)}
    if whole:   # UDFs that rewrite rows get each whole record as JSON
        columns["record"] = np.array([json.dumps(records[i], ensure_ascii=False) for i in order], dtype=object)
    return columns


def _gather(parts: list[dict], outputs: Sequence[str], n: int) -> dict[str, np.ndarray]:
    if not parts:
        return {name: np.zeros(0) for name in outputs}
    index = np.concatenate([np.asarray(p["index"]) for p in parts])
    order = np.argsort(index, kind="stable")
    if len(index) != n or not np.array_equal(index[order], np.arange(n)):
        raise RuntimeError(f"scorer returned {len(index)} rows for {n} inputs")
    return {name: np.concatenate([np.asarray(p[name]) for p in parts])[order] for name in outputs}


def _blocks(columns: dict[str, np.ndarray], rows: int) -> list:
    """Arrow tables of `rows` rows each (the last one shorter), texts as Arrow strings."""
    import pyarrow as pa

    n = len(columns["index"])
    return [pa.table({name: pa.array(values[start:start + rows].tolist()) for name, values in columns.items()})
            for start in range(0, n, rows)]


class LocalEngine:
    """Scorers in this process, batch after batch, one model load per scorer and stage."""

    name = "local"

    def __init__(self, batch_size: int = 32, threads: Optional[int] = None):
        self.batch_size = batch_size
        self.threads = threads
        self._loaded: dict[tuple, object] = {}

    def map(self, scorer_cls: type, settings: dict, records: Sequence[dict], *, desc: str) -> dict[str, np.ndarray]:
        key = (scorer_cls.__name__, tuple(sorted((k, repr(v)) for k, v in settings.items())))
        if key not in self._loaded:
            self._loaded[key] = scorer_cls(**settings, threads=self.threads)
        scorer = self._loaded[key]
        columns = _columns(records, getattr(scorer_cls, "needs_record", False))
        parts = []
        with progress(desc=desc, total=len(records), unit="row") as bar:
            for start in range(0, len(records), self.batch_size):
                parts.append(scorer({k: v[start:start + self.batch_size] for k, v in columns.items()}))
                bar.update(len(parts[-1]["index"]))
        return _gather(parts, scorer_cls.outputs, len(records))

    def close(self) -> None:
        self._loaded.clear()


class RayDataEngine:
    """Scorers as Ray Data class UDFs: `map_batches(Scorer, compute=ActorPoolStrategy(size=actors),
    num_cpus=..., num_gpus=...)`. Ray must be initialised by the caller (damoc.orchestrate.init_ray).
    The driver shows a progress bar over the rows as scored batches come back."""

    name = "ray_data"

    def __init__(self, batch_size: int = 32, actors: Optional[int] = None, cpus_per_actor: Optional[float] = None,
                 gpus_per_actor: float = 0.0):
        self.batch_size = batch_size
        self.actors = actors
        self.cpus_per_actor = cpus_per_actor
        self.gpus_per_actor = gpus_per_actor

    def plan(self, calls: int, node_cpus: Optional[Sequence[float]] = None) -> tuple[int, float]:
        """(actors, CPUs per actor) for a map of `calls` scorer calls, on the running Ray's alive
        nodes, or on nodes of `node_cpus` CPUs each when given (AutoEngine's question before Ray
        runs: what would Ray Data plan on this machine?).

        Unless `actors` is set: on CPUs, as many actors of `cpus_per_actor` CPUs (default 1) as the
        cluster's nodes hold, as long as each actor gets at least MIN_CALLS_PER_ACTOR calls, at
        most MAX_AUTO_ACTORS; with GPUs, one actor. Unless `cpus_per_actor` is set, the actors
        share the cluster's CPUs (data compression runs before any trial), as many each as still
        lets every actor be placed on some node (an actor no node can hold would stay pending).
        Each actor's torch gets that many threads."""
        if node_cpus is None:
            import ray

            total = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
            nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")] or [total]
        else:
            nodes, total = list(node_cpus), sum(node_cpus)

        def placeable(per: float) -> int:
            return sum(int(cpus // per) for cpus in nodes)

        actors = self.actors or (1 if self.gpus_per_actor else
                                 max(1, min(placeable(self.cpus_per_actor or 1), calls // MIN_CALLS_PER_ACTOR, MAX_AUTO_ACTORS)))
        if self.cpus_per_actor:
            return actors, float(self.cpus_per_actor)
        cpus = max(1, int(total // actors))
        while cpus > 1 and placeable(cpus) < actors:
            cpus -= 1
        return actors, float(cpus)

    def map(self, scorer_cls: type, settings: dict, records: Sequence[dict], *, desc: str) -> dict[str, np.ndarray]:
        import ray

        # Off a terminal Ray Data logs every operator's progress at INFO, several lines every few
        # seconds; damoc's own log says what runs where. (Ray configures these loggers' levels
        # itself, so setting the parent "ray.data" is not enough.)
        level = max(logging.getLogger("damoc").getEffectiveLevel(), logging.WARNING)
        for name in ("ray.data", "ray.data._internal.progress.logging_progress",
                     "ray.data._internal.execution.streaming_executor", "ray.data._internal.progress"):
            logging.getLogger(name).setLevel(level)
        if not records:
            return _gather([], scorer_cls.outputs, 0)
        actors, cpus = self.plan(-(-len(records) // self.batch_size))
        columns = _columns(records, getattr(scorer_cls, "needs_record", False))
        # One block per scorer call: Ray Data bundles whole blocks up to `batch_size` rows and
        # splits each bundle into batches, so blocks that do not divide the call size leave a
        # small remainder call after every full one (from_items' 15-row blocks gave 256 + 14).
        dataset = ray.data.from_arrow(_blocks(columns, self.batch_size)).map_batches(
            scorer_cls, fn_constructor_kwargs={**settings, "threads": int(cpus)}, batch_size=self.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
            num_gpus=self.gpus_per_actor or None)
        log.info("%s on Ray Data (%d actor(s), %g CPU each)", desc, actors, cpus)
        parts = []
        with progress(desc=desc, total=len(records), unit="row") as bar:
            for part in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                parts.append(part)
                bar.update(len(part["index"]))
        return _gather(parts, scorer_cls.outputs, len(records))

    def close(self) -> None:
        pass


# A small scorer runs faster as several single-threaded actors than as one actor with all the
# threads (its matrices are too small to share among threads; one thread preempted by Ray's own
# processes stalls the others): on 2 cores, a 3M-parameter model scored 12,000 rows in 72.6 s on
# two 1-CPU actors and in 98.6 s on one 2-CPU actor (benchmarks/README.md#data-compression-throughput-data_throughputpy).
# Only with enough calls to keep every actor busy: with one call per actor (SmolLM2, 512 rows in
# two calls) one actor's call held all the long rows and the stage took 1.5-1.6x as long as on one actor.
MIN_CALLS_PER_ACTOR = 4
MAX_AUTO_ACTORS = 8     # each actor holds its own copy of the model


def rows_per_call(model_batch_size: int) -> int:
    """Rows handed to a scorer per call. Much larger than the model's batch: the scorer sorts a
    call's rows by length before batching them, so big calls pad little (16-row calls measured
    1.6x slower than 512-row calls on the same rows), and per-call overhead is amortised."""
    return max(256, 16 * model_batch_size)


class AutoEngine:
    """`engine: auto`: each scorer map runs in this process when Ray Data would run it on one actor
    of this machine anyway, and on Ray Data otherwise.

    Why: an actor pool only pays off when it scores in parallel (at least 2 x MIN_CALLS_PER_ACTOR
    calls on 2 or more CPUs) or on another node. A map Ray Data would give one actor costs that
    actor's start-up and its fresh process's first import of the model code for nothing: the demo's
    data stage (key-token compression of 200 defgen and 300 lexcat prompts) took 17.5 s and 33.2 s
    on Ray Data, 11.2 s and 24.0 s in-process, writing the same rows (benchmarks/engine_choice.py;
    benchmarks/README.md, "Which engine for a small stage?").
    Both engines feed the scorers the same batches, so where a map ran does not change its result.

    Ray Data is started on first use through `start_ray` when Ray is not running yet (and shut down
    by `close` when this engine started it); a map that stays in-process needs no Ray at all."""

    def __init__(self, batch_size: int = 32, cpus_per_actor: Optional[float] = None,
                 start_ray: Optional[Callable[[], bool]] = None, on_cluster: bool = False):
        self.batch_size = batch_size
        self.on_cluster = on_cluster
        self.local = LocalEngine(batch_size=batch_size, threads=int(cpus_per_actor) if cpus_per_actor else None)
        self.ray_data = RayDataEngine(batch_size=batch_size, cpus_per_actor=cpus_per_actor)
        self._start_ray = start_ray
        self.started_ray = False
        self.ran: list[str] = []

    @property
    def name(self) -> str:
        """`auto` plus where its maps ran, e.g. `auto: local` (what the stage's stats record)."""
        used = list(dict.fromkeys(self.ran))
        return f"auto: {', '.join(used)}" if used else "auto"

    def where(self, rows: int) -> str:
        """`local` or `ray_data` for a map of `rows` rows: local when it is this machine's and Ray
        Data would plan one actor for it (RayDataEngine.plan; before Ray runs, the same rule on
        this machine's CPUs)."""
        import ray

        if not self._this_machine():
            return "ray_data"
        calls = -(-rows // self.batch_size)
        actors, _ = self.ray_data.plan(calls, None if ray.is_initialized() else [os.cpu_count() or 1])
        return "ray_data" if actors > 1 else "local"

    def _this_machine(self) -> bool:
        """Whether Ray's actors would run on this machine only: not when the run names a cluster
        (`cluster.address`, which `damoc submit` sets: an autoscaling cluster may have only its
        head node when the stage starts) or RAY_ADDRESS does (as `ray job submit` sets it); else
        a running Ray of one node, or none yet."""
        import ray

        if self.on_cluster or os.environ.get("RAY_ADDRESS"):
            return False
        if ray.is_initialized():
            return sum(1 for node in ray.nodes() if node.get("Alive")) <= 1
        return True

    def map(self, scorer_cls: type, settings: dict, records: Sequence[dict], *, desc: str) -> dict[str, np.ndarray]:
        where = self.where(len(records))
        self.ran.append(where)
        if where == "local":
            log.info("%s in this process (%d rows: one Ray Data actor's worth)", desc, len(records))
            return self.local.map(scorer_cls, settings, records, desc=desc)
        import ray

        if not ray.is_initialized() and self._start_ray is not None:
            self.started_ray = bool(self._start_ray()) or self.started_ray
        return self.ray_data.map(scorer_cls, settings, records, desc=desc)

    def close(self) -> None:
        self.local.close()
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False


def make_engine(kind: str, *, batch_size: int, actors: Optional[int] = None, cpus_per_actor: Optional[float] = None,
                gpus_per_actor: float = 0.0, start_ray: Optional[Callable[[], bool]] = None, on_cluster: bool = False):
    """An engine for scorers whose model batch is `batch_size` rows. `auto` with `actors` or
    `gpus_per_actor` set is Ray Data: those ask for an actor pool. `start_ray` starts Ray for an
    `auto` engine's first Ray Data map (Ray Data would otherwise start a default local one);
    `on_cluster` (the run names a Ray cluster) sends every `auto` map to Ray Data."""
    if kind == "local":
        return LocalEngine(batch_size=rows_per_call(batch_size), threads=int(cpus_per_actor) if cpus_per_actor else None)
    if kind == "ray_data" or (kind == "auto" and (actors or gpus_per_actor)):
        return RayDataEngine(batch_size=rows_per_call(batch_size), actors=actors, cpus_per_actor=cpus_per_actor,
                             gpus_per_actor=gpus_per_actor)
    if kind == "auto":
        return AutoEngine(batch_size=rows_per_call(batch_size), cpus_per_actor=cpus_per_actor, start_ray=start_ray,
                          on_cluster=on_cluster)
    raise ValueError(f"unknown data_compression.engine '{kind}' (auto, local, ray_data)")
