"""``sernet bench model | frontend | pipeline``. Each prints a short human summary and, with
``--json``, ends stdout with the whole result as ONE JSON line. Every option falls back to
the environment variable named in its ``--help``."""

from __future__ import annotations

from pathlib import Path

import click

from bench.common import emit, json_options

CTX = {"help_option_names": ["-h", "--help"]}


def _artifact_option(fn):
    return click.option(
        "--artifact", "artifact", type=click.Path(file_okay=False, path_type=Path), default=None,
        envvar="SERNET_BENCH_ARTIFACT", show_envvar=True,
        help="Model artifact directory [default: model_artifacts/ if committed, else a "
             "random-weight fixture built under .cache/].")(fn)


def _resolve_artifact(artifact: Path | None) -> Path:
    if artifact is not None:
        return artifact
    from bench.fixture import committed_or_fixture

    return committed_or_fixture()


@click.group("bench", context_settings=CTX)
def bench() -> None:
    """Benchmarks of the model, the frontend and the whole pipeline (bench/README.md)."""


@bench.command("model", context_settings=CTX)
@_artifact_option
@click.option("--peer/--no-peer", default=True, show_default=True, envvar="SERNET_BENCH_PEER",
              show_envvar=True, help="Also time the TFLite twin (ai-edge-litert; converting "
                                     "needs tensorflow, the bench extra).")
@json_options
def model(artifact: Path | None, peer: bool, quick: bool, repeats: int, as_json: bool,
          save: str | None) -> None:
    """Per-window latency (batch 1) and windows/s (batch 8, 32) at 1 and 2 threads: the
    artifact's int8 and fp32 models, the optimised int8 graph, and the TFLite peer."""
    from bench.model import run, table

    result = run(_resolve_artifact(artifact), quick=quick, repeats=repeats, peer=peer)
    click.echo(table(result), err=as_json)
    click.echo(f"int8/tflite-dynamic b1: {result['int8_vs_tflite_dynamic_b1']} (round-robin), "
               f"{result['int8_vs_tflite_dynamic_b1_steady']} (steady state)  "
               f"optimised int8/tflite-dynamic b1: {result['int8_opt_vs_tflite_dynamic_b1']}"
               + (f"  (peer: {result['peer_reason']})" if result["peer_reason"] else ""),
               err=as_json)
    emit(result, as_json, save)


@bench.command("frontend", context_settings=CTX)
@click.option("--chunk-ms", type=click.IntRange(10, 5000), default=100, show_default=True,
              envvar="SERNET_BENCH_CHUNK_MS", show_envvar=True, help="Pushed chunk size.")
@click.option("--hop-s", type=click.FloatRange(0.1, 3.0), default=1.0, show_default=True,
              envvar="SERNET_BENCH_HOP_S", show_envvar=True, help="Window hop (3 s windows).")
@json_options
def frontend(chunk_ms: int, hop_s: float, quick: bool, repeats: int, as_json: bool,
             save: str | None) -> None:
    """CPU per window: plain batch_features vs the streaming frontend (same run)."""
    from bench.frontend import run

    result = run(quick=quick, repeats=repeats, chunk_ms=chunk_ms, hop_s=hop_s)
    for name, h in result["hops"].items():
        c = h["cpu_ms_per_window"]
        click.echo(f"hop {h['hop_s']:.3f} s ({name}): plain {c['plain']['median']:.2f} ms, "
                   f"plain default-BLAS {c['plain_default_blas']['median']:.2f} ms, streaming "
                   f"{c['streaming']['median']:.2f} ms per window; streaming/plain "
                   f"{h['streaming_vs_plain']['median']:.3f}", err=as_json)
    w = result["worker"]
    click.echo(f"worker path ({w['speakers_per_batch']} speakers per batch, hop 1.008 s): plain "
               f"{w['cpu_ms_per_window']['plain']['median']:.2f} ms, streaming "
               f"{w['cpu_ms_per_window']['streaming']['median']:.2f} ms per window; "
               f"streaming/plain {w['streaming_vs_plain']['median']:.3f} (floor of an exact "
               f"streaming frontend: new frames + log/DCT = {w['floor_vs_plain']['median']:.3f})",
               err=as_json)
    emit(result, as_json, save)


@bench.command("pipeline", context_settings=CTX)
@_artifact_option
@click.option("--workers", type=click.IntRange(1, 8), default=1, show_default=True,
              envvar="SERNET_BENCH_WORKERS", show_envvar=True, help="Worker processes.")
@click.option("--speakers", type=click.IntRange(1, 5000), default=None,
              envvar="SERNET_BENCH_SPEAKERS", show_envvar=True,
              help="Run only this many speakers (no search for the largest N).")
@click.option("--chunk-ms", type=click.IntRange(20, 2000), default=100, show_default=True,
              envvar="SERNET_BENCH_CHUNK_MS", show_envvar=True,
              help="Producer chunk size, for --speakers and --quick runs; the capacity search "
                   "always measures both 100 and 500 ms chunks.")
@click.option("--audio-s", type=click.FloatRange(4, 120), default=12.0, show_default=True,
              envvar="SERNET_BENCH_AUDIO_S", show_envvar=True,
              help="Seconds of real-time audio per speaker in each run.")
@click.option("--lockstep/--staggered", default=False, show_default=True,
              envvar="SERNET_BENCH_LOCKSTEP", show_envvar=True,
              help="Start every speaker at the same instant (worst-case bursts) instead of at "
                   "phases spread over one hop.")
@click.option("--confirm", type=click.IntRange(0, 10), default=2, show_default=True,
              envvar="SERNET_BENCH_CONFIRM", show_envvar=True,
              help="Capacity search: run the largest passing N this many more times; it stands "
                   "only if most of its runs pass, else the search continues below it.")
@click.option("--producer-linger-ms", type=click.IntRange(0, 200), default=2, show_default=True,
              envvar="SERNET_BENCH_PRODUCER_LINGER_MS", show_envvar=True,
              help="Linger of the load generator's producer (one producer for all speakers, "
                   "like an edge gateway). The latency clock starts when a chunk is enqueued, "
                   "so the linger counts against the p99.")
@click.option("--partitions", type=click.IntRange(1, 256), default=None,
              envvar="SERNET_BENCH_PARTITIONS", show_envvar=True,
              help="Partitions of the input and output topics (default: 2 per worker, at least 2).")
@click.option("--compare", "compare_spec", default=None, metavar="VAR=A,B",
              envvar="SERNET_BENCH_COMPARE", show_envvar=True,
              help="Interleaved A/B of a worker environment variable (e.g. "
                   "SERNET_DIRECT_DELIVERY=1,0; the first value is the baseline): --repeats "
                   "rounds of one --speakers run per value, order alternating per round; prints "
                   "per-value medians and same-round ratios to the baseline.")
@json_options
def pipeline(artifact: Path | None, workers: int, speakers: int | None, chunk_ms: int,
             audio_s: float, lockstep: bool, confirm: int, producer_linger_ms: int,
             partitions: int | None, compare_spec: str | None, quick: bool, repeats: int,
             as_json: bool, save: str | None) -> None:
    """Simulated real-time speakers through tansu and real `sernet worker` processes."""
    from bench.pipeline import ab_table, compare, parse_compare, run

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    common = dict(workers=workers, chunk_ms=chunk_ms, audio_s=audio_s, quick=quick,
                  lockstep=lockstep, producer_linger_ms=producer_linger_ms,
                  partitions=partitions, log=log)
    if compare_spec is not None:
        try:
            var, values = parse_compare(compare_spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--compare") from None
        if not speakers:
            raise click.UsageError("--compare needs --speakers (a fixed load per run)")
        result = compare(_resolve_artifact(artifact), var, values, rounds=repeats,
                         speakers=speakers, **common)
        click.echo(ab_table(result), err=as_json)
    else:
        result = run(_resolve_artifact(artifact), speakers=speakers, repeats=repeats,
                     confirm=confirm, **common)
    emit(result, as_json, save)
