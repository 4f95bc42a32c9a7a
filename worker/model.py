"""onnxruntime session wrapper: one per process, threads pinned, batch scoring.

Three layers (STYLE.md): this session wrapper -> the worker's per-speaker streaming scorer ->
the offline ``predict`` helper.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.artifact import Artifact, load_artifact


class EmotionModel:
    """Scores feature windows (B, T, F) -> class probabilities (B, n_labels)."""

    def __init__(self, path: str | Path, labels: list[str], threads: int = 1,
                 sha256: str | None = None, name: str = "light-sernet", version: str = "0",
                 run_batch: int | None = None, memory_arena: bool = True) -> None:
        import onnxruntime as ort

        if run_batch is not None and run_batch < 1:
            raise ValueError(f"run_batch must be >= 1, got {run_batch}")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not memory_arena:
            # the long-running worker: with the CPU arena and memory-pattern planning a batch
            # of 32 windows leaves ~100 MB resident for the life of the process; without them
            # activations are malloc'ed and freed per run (same outputs; bench/README.md)
            opts.enable_cpu_mem_arena = False
            opts.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.labels = list(labels)
        self.path = Path(path)
        self.sha256 = sha256
        self.name = name
        self.version = version
        # most windows per onnxruntime call (None: the whole batch at once). On CPU the int8
        # network's activations of a 32-window call (~3 MB per window) outgrow the caches and
        # stay resident in malloc's heap: one window per call is both the fastest per window
        # and the smallest (bench/README.md)
        self.run_batch = run_batch

    @classmethod
    def from_artifact(cls, artifact: Artifact | str | Path, precision: str | None = None,
                      threads: int = 1, run_batch: int | None = None,
                      memory_arena: bool = True) -> "EmotionModel":
        if not isinstance(artifact, Artifact):
            artifact = load_artifact(artifact)
        path = artifact.model_path(precision)
        return cls(path, artifact.labels, threads=threads, sha256=artifact.sha256(path.name),
                   name=artifact.name, version=artifact.version, run_batch=run_batch,
                   memory_arena=memory_arena)

    def scores(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim == 2:
            features = features[None]
        if features.shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        step = self.run_batch or features.shape[0]
        if step >= features.shape[0]:
            return self._run(features)
        return np.concatenate([self._run(features[i : i + step])
                               for i in range(0, features.shape[0], step)])

    def _run(self, features: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: features})
        return out.astype(np.float32, copy=False)
