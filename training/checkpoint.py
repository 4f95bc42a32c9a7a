"""Checkpoints: the weights plus everything needed to rebuild and describe the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.model import LightSERNet
from worker.frontend import FrontendConfig


def save(path: str | Path, model: LightSERNet, labels: list[str], frontend: FrontendConfig,
         train_config: dict, **meta: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "labels": list(labels),
                "frontend": frontend.to_dict(), "train_config": train_config, **meta}, path)
    return path


def load(path: str | Path) -> tuple[LightSERNet, dict]:
    blob = torch.load(str(path), map_location="cpu", weights_only=False)
    tc = blob["train_config"]
    model = LightSERNet(len(blob["labels"]), dropout=tc.get("dropout", 0.3),
                        input_norm=tc.get("input_norm", "none"))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, blob
