"""Train one model on a whole corpus (the artifact's model) -- the `sernet train` core."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from training import checkpoint, features
from training.corpora import Utterance, corpus_arrays, corpus_label_sets, fingerprint
from training.train import TrainConfig, train_distilled
from worker.frontend import FrontendConfig


def fit(utterances: list[Utterance], labels: list[str], cfg: FrontendConfig, tcfg: TrainConfig,
        out: Path, progress: bool = True, cache_dir: Path | None = features.DEFAULT_CACHE) -> Path:
    from rich.progress import Progress

    data = features.build(utterances, cfg, "train", cache_dir=cache_dir, progress=progress)
    y = np.array([labels.index(u.label) for u in utterances])
    ids = np.arange(len(utterances))
    start = time.time()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("train (all speakers)", total=tcfg.total_epochs)

        def on_epoch(epoch: int, stats: dict) -> None:
            acc = f" acc {stats['train_acc']:.2f}" if "train_acc" in stats else ""
            bar.update(task, completed=epoch,
                       description=f"{stats.get('phase', 'train')} loss {stats['loss']:.3f}{acc}")
            if not progress and epoch % 5 == 0:  # a line now and then without a live bar
                print(f"epoch {epoch}/{tcfg.total_epochs} loss {stats['loss']:.3f}{acc}",
                      file=sys.stderr, flush=True)

        groups, allowed = corpus_arrays(utterances, labels)
        result = train_distilled(data, y, ids, len(labels), tcfg, on_epoch=on_epoch,
                                 groups=groups, allowed=allowed)
    return checkpoint.save(out, result.model, labels, cfg, tcfg.to_dict(), history=result.history,
                           data_fingerprint=fingerprint(utterances),
                           corpora={c: {"labels": ls, "utterances": sum(u.corpus == c for u in utterances)}
                                    for c, ls in corpus_label_sets(utterances).items()},
                           speakers=sorted({u.speaker for u in utterances}),
                           n_utterances=len(utterances), train_seconds=time.time() - start)
