"""`qponder filter --engine ray` on a local Ray cluster (2 CPUs, started once for the session) with the bundled model:
the same verdicts as the local engine row for row, into the store and into parquet shards; a broken file is a row;
a rerun scores nothing; a run killed with SIGKILL resumes without losing or repeating a finished shard; a WebDataset
tar shard and a table of URLs are inputs; a failing backend gives error rows, and a dead worker is restarted, none
dropped. The model is the bundled nano one: nothing to build."""

import hashlib
import io
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from smoke import solid_image  # a test helper of the nano recipe (examples/nano), no model

from qponder_plugin.cli import build

ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'qponder-plugin[ray]'")
pa = pytest.importorskip("pyarrow", reason="needs pyarrow (the filter extra)")
pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (the filter extra)")
# A hang fails within 4 minutes; the fixtures (the tiny model, the local engine's run) are not counted.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.model, pytest.mark.timeout(240, func_only=True)]
IMAGES = 12


@pytest.fixture(scope="session")
def cluster():
    """One local Ray cluster for the session: its address, for the command-line runs in subprocesses."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray-src")
    for index in range(IMAGES):
        solid_image(index / (IMAGES - 1), 48, seed=700 + index).save(folder / f"img{index:02d}.png")
    shutil.copy(folder / "img03.png", folder / "again03.png")  # the same content: scored once
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def invoke(*args):
    return CliRunner().invoke(build(), ["filter", *map(str, args)], catch_exceptions=False)


def last_json(text: str) -> dict:
    """The summary: the last JSON line (Ray's workers may log to the driver's stdout after it)."""
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def rows(store: Path) -> dict[str, tuple]:
    with sqlite3.connect(store) as db:
        return {path: (status, bool(passed), stage, score, digest) for path, status, passed, stage, score, digest
                in db.execute("SELECT path, status, passed, stage, score, digest FROM results")}


@pytest.fixture(scope="module")
def threshold(source) -> float:
    """Just above one image's no-think score: the cascade reasons about that one (and any as near), not all."""
    from qponder_plugin import load_scorer

    with load_scorer("nano") as scorer:
        scores = sorted(a.score for a in scorer.assess_batch(sorted(source.glob("img*.png")), think=False))
    return round(scores[len(scores) // 2] + 0.1, 3)


@pytest.fixture(scope="module")
def local(source, threshold, tmp_path_factory) -> dict[str, tuple]:
    """The local engine's rows: what the Ray engine must reproduce."""
    store = tmp_path_factory.mktemp("local") / "store.sqlite"
    result = invoke(source, "--threshold", threshold, "--store", store, "-m", "nano", "--json")
    assert result.exit_code == 1, result.output  # the broken file
    assert last_json(result.stdout)["calls"]["think"] > 0  # the cascade reasoned about some: both stages run
    return rows(store)


def same_verdicts(got: dict[str, tuple], want: dict[str, tuple]) -> None:
    assert sorted(got) == sorted(want)
    for path, (status, passed, stage, score, digest) in want.items():
        other = got[path]
        assert other[:3] == (status, passed, stage) and other[4] == digest, path
        assert (score is None and other[3] is None) or abs(other[3] - score) < 1e-4, path


def test_store_engine_matches_local_and_a_rerun_scores_nothing(cluster, source, threshold, local, tmp_path):
    store, keep, reject = tmp_path / "ray.sqlite", tmp_path / "keep", tmp_path / "reject"
    args = (source, "--threshold", threshold, "--store", store, "-m", "nano", "--keep", keep, "--reject", reject,
            "--engine", "ray", "--workers", 2, "--batch-size", 4, "--json")
    first = invoke(*args)
    assert first.exit_code == 1, first.output
    summary = last_json(first.stdout)
    assert (summary["total"], summary["failed"], summary["scored"]) == (IMAGES + 2, 1, IMAGES + 2)
    same_verdicts(rows(store), local)
    broken = rows(store)[str(source / "broken.jpg")]
    assert broken[:3] == ("image_error", False, "error")
    placed = sorted(p.name for folder in (keep, reject) for p in folder.iterdir())
    assert placed == sorted(p.name for p in source.iterdir() if p.name != "broken.jpg")
    assert sorted(p.name for p in keep.iterdir()) == sorted(Path(p).name for p, r in local.items() if r[1])

    again = last_json(invoke(*args).stdout)
    assert (again["model_calls"], again["scored"], again["cached"], again["placed"]) == (0, 0, IMAGES + 2, 0)


def output_rows(folder: Path) -> list[dict]:
    return [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def command(args) -> list[str]:
    return [sys.executable, "-m", "qponder_plugin", "filter", *map(str, args)]


def test_parquet_output_killed_and_resumed_loses_and_repeats_nothing(cluster, source, threshold, local, tmp_path):
    output = tmp_path / "out"
    args = [source, "--threshold", threshold, "-m", "nano", "--engine", "ray", "--address", cluster,
            "--output", output, "--shard-size", 2, "--batch-size", 2, "--json"]
    process = subprocess.Popen(command(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and len(list(output.glob("_finished/*"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("*.parquet")}
    assert 2 <= len(before) < (IMAGES + 2) // 2, "the kill should land in the middle of the run"

    final = subprocess.run(command(args), capture_output=True, text=True, timeout=180)
    assert final.returncode in (0, 1), final.stderr  # 1 when the broken file's shard was left to this run
    summary = last_json(final.stdout)
    assert final.returncode == (summary["failed"] > 0)
    assert summary["shards"] == (IMAGES + 2) // 2 and summary["skipped"] >= len(before)
    assert {p.name: p.stat().st_mtime_ns for p in output.glob("*.parquet") if p.name in before} == before
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]  # no part file left
    found = output_rows(output)
    assert sorted(r["path"] for r in found) == sorted(local)  # every input once: nothing lost, nothing twice
    same_verdicts({r["path"]: (r["status"], r["verdict"] == "keep", r["stage"], r["score"], r["hash"])
                   for r in found}, local)
    records = [json.loads(p.read_text()) for p in output.glob("_finished/*.json")]
    assert sum(r["rows"] for r in records) == len(found) and len(records) == summary["shards"]

    done = subprocess.run(command(args), capture_output=True, text=True, timeout=120)
    assert last_json(done.stdout)["skipped"] == summary["shards"] and last_json(done.stdout)["total"] == 0


def test_webdataset_tar_shard(cluster, source, threshold, local, tmp_path):
    shard = tmp_path / "shard-000000.tar"
    members = {}
    with tarfile.open(shard, "w") as tar:
        for index, name in enumerate(["img00.png", "img05.png", "img11.png", "broken.jpg"]):
            data = (source / name).read_bytes()
            members[f"{index:06d}"] = hashlib.sha256(data).hexdigest()
            for suffix, content in ((Path(name).suffix[1:], data), ("cls", str(index).encode())):
                info = tarfile.TarInfo(f"{index:06d}.{suffix}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    output = tmp_path / "out"
    result = invoke(shard, "--threshold", threshold, "-m", "nano", "--engine", "ray", "--output", output,
                    "--json")
    assert result.exit_code == 1, result.output  # the broken sample
    assert last_json(result.stdout)["total"] == 4
    found = {Path(r["path"]).stem: r for r in output_rows(output)}
    assert sorted(found) == sorted(members)
    by_hash = {digest: row for row in local.values() for digest in [row[4]] if digest}
    for key, digest in members.items():
        row = found[key]
        if key == "000003":
            assert (row["status"], row["verdict"], row["hash"]) == ("image_error", "reject", digest)
            continue
        assert row["hash"] == digest and row["status"] == "ok"
        assert (row["verdict"] == "keep", row["stage"]) == by_hash[digest][1:3]
        assert abs(row["score"] - by_hash[digest][3]) < 1e-4
    assert json.loads(found["000000"]["timings"])["infer_ms"] > 0


def test_a_table_of_urls_as_input(cluster, source, threshold, local, serve, tmp_path):
    """A parquet table with a URL column (served over HTTP here; ``s3://`` and ``gs://`` read the same way)."""
    base = serve(source)
    names = ["img01.png", "img07.png", "broken.jpg", "missing.png"]
    table = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"{base}/{n}" for n in names], "caption": names}), table)
    output = tmp_path / "out"
    result = invoke(table, "--threshold", threshold, "-m", "nano", "--engine", "ray", "--output", output, "--json")
    assert result.exit_code == 1, result.output
    found = {r["path"].rsplit("/", 1)[-1]: r for r in output_rows(output)}
    assert sorted(found) == sorted(names)
    for name in names[:2]:
        want = local[str(source / name)]
        assert (found[name]["status"], found[name]["verdict"] == "keep", found[name]["hash"]) == (
            want[0], want[1], want[4]) and abs(found[name]["score"] - want[3]) < 1e-4
    assert found["broken.jpg"]["status"] == "image_error" and found["broken.jpg"]["hash"]
    assert (found["missing.png"]["status"], found["missing.png"]["error"]) == ("image_error",
                                                                              f"{base}/missing.png: not found")


def test_a_failing_backend_gives_error_rows_and_drops_none(cluster, source, threshold, tmp_path):
    """An OpenAI-compatible server that is not there: every batch fails in the backend, and each input still ends
    as a row (the store's report is the local engine's)."""
    pytest.importorskip("openai", reason="needs the openai extra")
    store = tmp_path / "s.sqlite"
    result = invoke(source, "--threshold", threshold, "--store", store, "-m", "nano", "--backend", "openai",
                    "--base-url", "http://127.0.0.1:9/v1", "-o", "max_retries=0", "-o", "timeout=2", "--engine", "ray",
                    "--workers", 2, "--json")
    assert result.exit_code == 1, result.output
    summary = last_json(result.stdout)
    assert (summary["total"], summary["failed"]) == (IMAGES + 2, IMAGES + 2)
    statuses = {Path(p).name: r[0] for p, r in rows(store).items()}
    assert len(statuses) == IMAGES + 2 and statuses.pop("broken.jpg") in ("image_error", "backend_error")
    assert set(statuses.values()) == {"backend_error"}  # (the backend fails before the broken file is read)


def test_ray_options_need_the_ray_engine(tmp_path):
    result = CliRunner().invoke(build(), ["filter", str(tmp_path), "-t", "3", "--workers", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.output
    result = CliRunner().invoke(build(), ["filter", str(tmp_path / "a.tar"), "-t", "3"])
    assert result.exit_code == 2 and "--output" in result.output


CRASHING_BACKEND = '''
import os

from qponder_plugin import hookimpl, register_plugin
from qponder_plugin.default_plugins.transformers_backend import TransformersBackend


class Crashing(TransformersBackend):
    """The transformers backend in a worker process that dies (os._exit) on its first batch, or on every one."""

    def generate(self, requests, **options):
        marker = os.environ["CRASH_MARKER"]
        if os.environ.get("CRASH_ALWAYS") or not os.path.exists(marker):
            open(marker, "a").close()
            os._exit(1)
        return super().generate(requests, **options)


class Plugin:
    @hookimpl
    def register_backends(self, register):
        register("crashing", Crashing)


def setup():
    register_plugin(Plugin(), "crashing")
'''

DRIVER = '''
import json, sys
import ray
from qponder_plugin.filter.fingerprint import scoring_config
from qponder_plugin.gate import QualityGate
from qponder_plugin.filter.options import FilterOptions, RayOptions
from qponder_plugin.filter.ray_engine import RayFilterRun
from qponder_plugin.filter.sources import collect_inputs
from qponder_plugin.filter.store import ResultStore

address, plugins, marker, always, source, model, store, threshold = sys.argv[1:]
env = {"PYTHONPATH": plugins, "CRASH_MARKER": marker, **({"CRASH_ALWAYS": "1"} if always == "1" else {})}
ray.init(address=address, runtime_env={"env_vars": env, "worker_process_setup_hook": "crashing_backend.setup"})
with ResultStore(store) as results, QualityGate(float(threshold), model=model, backend="crashing") as gate:
    run = RayFilterRun(results, gate, scoring_config(model, backend="crashing"),
                       FilterOptions(engine="ray", ray=RayOptions(batch_size=4)))
    outcomes = list(run.outcomes(run.settle(collect_inputs([source]))))
print(json.dumps(run.summary.to_dict()))
'''


@pytest.mark.parametrize("always", [False, True], ids=["dies-once", "dies-every-time"])
def test_a_dead_worker_is_restarted_and_its_batch_retried_a_bounded_number_of_times(cluster, source, threshold,
                                                                                     local, tmp_path, always):
    (tmp_path / "crashing_backend.py").write_text(CRASHING_BACKEND)
    store, marker = tmp_path / "s.sqlite", tmp_path / "crashed"
    driver = [sys.executable, "-c", DRIVER, cluster, tmp_path, marker, int(always), source, "nano", store, threshold]
    done = subprocess.run(list(map(str, driver)), capture_output=True, text=True, timeout=200)
    assert marker.exists()  # a worker died
    if always:  # restarted twice, retried twice, then the run stops: an error, never a hang or a silent gap
        assert done.returncode != 0 and "ActorDiedError" in done.stderr, done.stderr[-3000:]
        return
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_json(done.stdout)["total"] == IMAGES + 2
    with sqlite3.connect(store) as db:
        got = {path: (status, bool(passed), stage, score, digest) for path, status, passed, stage, score, digest
               in db.execute("SELECT path, status, passed, stage, score, digest FROM results")}
    same_verdicts(got, local)  # the batch that killed its worker was scored again: nothing dropped


def test_more_workers_than_a_local_cluster_holds_is_an_error_not_a_wait(cluster, source, threshold, tmp_path):
    result = invoke(source, "--threshold", threshold, "--store", tmp_path / "s.sqlite", "-m", "nano", "--engine",
                    "ray", "--workers", 3)
    assert result.exit_code == 1 and "3 workers need 3 CPUs; this local Ray cluster has 2" in result.output
