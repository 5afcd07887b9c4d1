"""``qponder filter --engine ray``: the filter on Ray Data, one backend per actor.

Ray Data carries the images to an actor pool (``map_batches`` with ``ActorPoolStrategy``); each
:class:`ReadingsActor` holds one gate, so one backend. :class:`RayFilterRun` feeds the local engine's store: the
driver hashes and runs the gate's cascade over the store's readings; the inputs it settles are committed and placed
at once, the rest go to Ray, whose actors run the same cascade over what the store held layered on their own
scorer. Each returned batch's readings are committed, then its inputs decided, committed and placed as locally.
(:mod:`.shards` writes parquet shards instead of the store.)

A dead actor is restarted and its batch retried at most ``max_retries`` times, then the run stops (committed work
stays). Nothing drops rows: no ``max_errored_blocks``. Ray is imported lazily.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

from ..gate import QualityGate
from ..readings import HeldReadings, Layered, ScorerReadings
from ..result import Assessment
from .engine import FilterRun, Hashed, Outcome, unique_digests
from .options import RayOptions
from .sources import Input
from .store import assessment_from_json

MODES = ("no-think", "think")


class ReadingsActor:
    """Rows ``digest, path, held`` (the store's readings of the image, ``{mode: assessment as JSON}``) in; the
    readings the cascade made, ``digest, made`` (the same form), out."""

    def __init__(self, gate: dict):
        self.gate = QualityGate(**gate)

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        held = {mode: {r["digest"]: assessment_from_json(a) for r in rows
                       if (a := json.loads(r["held"]).get(mode))} for mode in MODES}
        made: dict[str, dict[str, str]] = {r["digest"]: {} for r in rows}

        def keep(readings: dict[str, Assessment]) -> None:
            for digest, reading in readings.items():
                made[digest][reading.mode] = json.dumps(reading.to_dict())

        scorer = ScorerReadings(lambda: self.gate.scorer, {r["digest"]: r["path"] for r in rows})
        try:
            self.gate.readout(list(made), Layered(HeldReadings(held), scorer, keep))
        except Exception as exc:  # beyond the scorer's own per-item handling: the batch becomes error readings
            keep({r["digest"]: self.gate.failure(r["path"], f"{type(exc).__name__}: {exc}", self.gate.model,
                                                 "backend_error") for r in rows})
        return pa.table({"digest": list(made), "made": [json.dumps(m) for m in made.values()]})


def connect(options: RayOptions):
    """Join (or start) the cluster, refusing a local one too small for the actor pool; return the ``ray`` module."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RuntimeError("the ray engine needs Ray Data: pip install 'qponder-plugin[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, logging_level="WARNING")
    resource, each = ("GPU", options.gpus_per_worker) if options.gpus_per_worker else ("CPU", 1)
    have = ray.cluster_resources().get(resource, 0)
    if options.address is None and have < options.workers * each:  # a local cluster never grows: it would wait
        raise RuntimeError(f"{options.workers} workers need {options.workers * each:g} {resource}s; this local "
                           f"Ray cluster has {have:g}")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def map_batches(dataset, actor, arguments: dict, options: RayOptions):
    """``map_batches`` over an actor pool with bounded restarts and retries (Ray's defaults are unbounded)."""
    import ray.data

    resources = {"num_gpus": options.gpus_per_worker} if options.gpus_per_worker else {}
    with warnings.catch_warnings():  # Ray 2.60 takes the actor's restart bounds only as (deprecated) remote args
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return dataset.map_batches(actor, fn_constructor_kwargs=arguments, batch_size=options.batch_size,
                                   batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=options.workers),
                                   num_cpus=1, max_restarts=options.max_retries,
                                   max_task_retries=options.max_retries, **resources)


class RayFilterRun(FilterRun):
    """A :class:`FilterRun` whose missing readings are made on Ray by ``options.ray.workers`` actors, each a copy
    of ``gate``. The driver's own gate loads no model."""

    def outcomes(self, inputs: list[Input]) -> Iterator[Outcome]:
        waiting: dict[str, list[Hashed]] = {}  # digest -> the inputs waiting for Ray's readings of it
        rows = []
        for begin in range(0, len(inputs), self.options.chunk_size):
            hashed = self.hash(inputs[begin:begin + self.options.chunk_size])
            first = unique_digests(hashed)
            readout = self.gate.readout(list(first), self.stored)
            rows += [self._row(first[d]) for d in readout.missing if d not in waiting]
            for item in hashed:
                if item.digest in readout.missing:
                    waiting.setdefault(item.digest, []).append(item)
            yield from self.finish([h for h in hashed if h.digest not in readout.missing], readout, set())
        if rows:
            yield from self._on_ray(rows, waiting)

    def _row(self, item: Hashed) -> dict:
        held = {mode: json.dumps(a.to_dict()) for mode in MODES
                for a in self.stored.read([item.digest], mode).values()}
        return {"digest": item.digest, "path": item.input.path, "held": json.dumps(held)}

    def _on_ray(self, rows: list[dict], waiting: dict[str, list[Hashed]]) -> Iterator[Outcome]:
        """Send ``rows`` to the actor pool; commit each returned batch's readings, then settle its inputs."""
        connect(self.options.ray)
        import ray.data

        batches = map_batches(ray.data.from_items(rows), ReadingsActor, {"gate": self.gate.settings()},
                              self.options.ray).iter_batches(batch_size=None, batch_format="pyarrow")
        for batch in batches:
            made: dict[str, dict[str, Assessment]] = {mode: {} for mode in MODES}
            for row in batch.to_pylist():
                for mode, reading in json.loads(row["made"]).items():
                    made[mode][row["digest"]] = assessment_from_json(reading)
            for mode, readings in made.items():
                if readings:
                    self.stored.save(readings)
                    self.summary.count_calls({mode: sum(a.status != "image_error" for a in readings.values())})
            digests = list(dict.fromkeys(d for readings in made.values() for d in readings))
            readout = self.gate.readout(digests, Layered(self.stored, HeldReadings(made)))
            if readout.missing:
                raise RuntimeError(f"Ray returned no reading for {len(readout.missing)} images")
            yield from self.finish([h for d in digests for h in waiting.pop(d)], readout, set(digests))
        if waiting:
            raise RuntimeError(f"Ray returned no reading for {len(waiting)} images")
