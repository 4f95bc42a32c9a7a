"""Training loop: one fold or the final model, on cached features.

Two presets. ``paper`` is the published recipe (Adam 1e-4, batch 32, L2 1e-6, 300 epochs, lr
times e^-0.15 every 20 epochs after epoch 50, one centre crop, no augmentation). ``robust`` is
the recipe the committed artifact uses: the whole of each utterance (a random window per
epoch), waveform augmentation variants, SpecAugment, mixup, class-balanced loss, a one-cycle
schedule and an exponential moving average of the weights. Model selection is a fixed
schedule: the EMA weights after the last epoch. Nothing about a test speaker steers training.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from training.augment import VARIANTS
from training.config import PRESETS, TrainConfig, preset  # noqa: F401  (re-exported)
from training.features import FeatureSet
from training.model import LightSERNet


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(cfg: TrainConfig, epoch: int, step_frac: float) -> float:
    """Learning rate at ``epoch`` (0-based) plus ``step_frac`` of it."""
    if cfg.schedule == "paper":
        if epoch < cfg.decay_start:
            return cfg.lr
        return cfg.lr * math.exp(-cfg.decay_rate * ((epoch - cfg.decay_start) // cfg.decay_every + 1))
    t = (epoch + step_frac) / max(cfg.epochs, 1)
    warm = 0.15
    if t < warm:
        return cfg.lr * (0.04 + 0.96 * t / warm)
    return cfg.lr * (0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))) + 1e-6


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float,
               weight: torch.Tensor | None) -> torch.Tensor:
    """Focal loss (Lin et al.) on soft targets: -sum (1-p)^gamma * y * log p."""
    logp = F.log_softmax(logits, dim=-1)
    loss = -((1 - logp.exp()) ** gamma) * target * logp
    if weight is not None:
        loss = loss * weight
    return loss.sum(dim=-1).mean()


#: What a class a sample's corpus does not annotate gets as logit inside the loss: its softmax
#: share is exactly 0, so it gets no gradient from that sample (finite, so 0 * it stays 0).
UNKNOWN_LOGIT = -1e9


def partial_logits(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Logits for a loss restricted to each sample's annotated classes (partial labels).

    A corpus that lacks a class says nothing about it: its samples must not teach the model
    that the class never happens. The softmax inside the loss runs over the annotated classes
    only; the others are masked out, so they get neither a push down nor up from the sample.
    ``allowed``: (B, C) bool, or None for every class."""
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed, UNKNOWN_LOGIT)


def soft_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    loss = -target * F.log_softmax(logits, dim=-1)
    if weight is not None:
        loss = loss * weight
    return loss.sum(dim=-1).mean()


def spec_augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    b, t, f = x.shape
    x = x.clone()
    for _ in range(cfg.time_masks):
        width = torch.randint(0, cfg.time_mask_frames + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (t - width)).long()
        idx = torch.arange(t)[None, :]
        mask = (idx >= start[:, None]) & (idx < (start + width)[:, None])
        x[mask] = 0.0
    for _ in range(cfg.freq_masks):
        width = torch.randint(0, cfg.freq_mask_bins + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (f - width)).long()
        idx = torch.arange(f)[None, :]
        mask = (idx >= start[:, None]) & (idx < (start + width)[:, None])
        x.permute(0, 2, 1)[mask] = 0.0
    return x


def balanced_weights(utt_ids: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                     alpha: float) -> np.ndarray:
    """Sampling probability of each of ``utt_ids`` such that no corpus or class dominates: a
    corpus (``groups``) gets a share ~ its size ** ``alpha`` (0: equal shares, 1: by size), each
    class it annotates an equal part of that share, each utterance of a (corpus, class) cell an
    equal part of the cell's."""
    utt_ids = np.asarray(utt_ids)
    g, y = groups[utt_ids], labels[utt_ids]
    corpora, sizes = np.unique(g, return_counts=True)
    share = dict(zip(corpora.tolist(), (sizes.astype(np.float64) ** alpha) / np.sum(sizes ** alpha)))
    w = np.empty(len(utt_ids))
    for c in corpora:
        in_c = g == c
        classes, counts = np.unique(y[in_c], return_counts=True)
        for k, n in zip(classes, counts):
            w[in_c & (y == k)] = share[c] / len(classes) / n
    return w / w.sum()


class EpochSampler:
    """Picks one window per training utterance per epoch (variant and position at random).

    With ``cfg.epoch_utterances`` and ``groups`` (each utterance's corpus), an epoch is that many
    utterances drawn with replacement by :func:`balanced_weights` instead."""

    def __init__(self, data: FeatureSet, utt_ids: np.ndarray, cfg: TrainConfig, seed: int,
                 labels: np.ndarray | None = None, groups: np.ndarray | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.cfg = cfg
        self.weights = None
        if cfg.epoch_utterances and groups is not None and labels is not None:
            self.weights = balanced_weights(utt_ids, labels, groups, cfg.corpus_alpha)
        clean = data.variant == 0
        augmented = ~clean
        if cfg.aug_variant_names:  # variant indices follow the cache's order (VARIANTS)
            chosen = [list(VARIANTS).index(v) for v in cfg.aug_variant_names if v != "clean"]
            augmented = np.isin(data.variant, chosen)
        self.by_utt: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for u in utt_ids:
            rows = np.flatnonzero(data.utt == u)
            self.by_utt[int(u)] = (rows[clean[rows]], rows[augmented[rows]])
        self.utt_ids = np.asarray(utt_ids)

    def epoch(self) -> np.ndarray:
        picks = []
        utts = self.utt_ids
        if self.weights is not None:
            utts = self.rng.choice(self.utt_ids, size=self.cfg.epoch_utterances, p=self.weights)
        for u in utts:
            clean_rows, aug_rows = self.by_utt[int(u)]
            rows = clean_rows
            if self.cfg.augment and len(aug_rows) and self.rng.random() > self.cfg.clean_prob:
                rows = aug_rows
            if self.cfg.random_crop:
                picks.append(rows[self.rng.integers(len(rows))])
            else:  # the centre window of the clean variant, as the published recipe
                picks.append(clean_rows[len(clean_rows) // 2])
        picks = np.asarray(picks)
        self.rng.shuffle(picks)
        return picks


@dataclass
class TrainResult:
    model: LightSERNet
    history: list[dict] = field(default_factory=list)
    teachers: list[LightSERNet] = field(default_factory=list)  # the models it was distilled from


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation term: T^2 * KL(teacher_T || student_T), batch mean."""
    t = temperature
    target = F.softmax(teacher_logits / t, dim=-1)
    return F.kl_div(F.log_softmax(logits / t, dim=-1), target, reduction="batchmean") * t * t


@torch.no_grad()
def ensemble_logits(teachers: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Log of the teachers' mean probability (an ensemble's logits, up to a constant)."""
    probs = torch.stack([torch.softmax(m(x), dim=-1) for m in teachers]).mean(0)
    return probs.clamp_min(1e-8).log()


def mix_partner(groups: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """A mixup partner for each row from the same group (corpus): mixing across corpora would
    blend two different sets of annotated classes."""
    perm = torch.arange(len(groups))
    for g in np.unique(groups):
        idx = torch.from_numpy(np.flatnonzero(groups == g))
        perm[idx] = idx[torch.randperm(len(idx), generator=gen)]
    return perm


def train(data: FeatureSet, labels: np.ndarray, utt_ids: np.ndarray, num_classes: int,
          cfg: TrainConfig, on_epoch: Callable[[int, dict], None] | None = None,
          teachers: list[torch.nn.Module] | None = None, groups: np.ndarray | None = None,
          allowed: np.ndarray | None = None) -> TrainResult:
    """Train on the windows of ``utt_ids``; ``labels[u]`` is utterance ``u``'s class index.

    Several corpora: ``groups[u]`` is utterance ``u``'s corpus index (balanced sampling with
    ``cfg.epoch_utterances``, mixup inside a corpus) and ``allowed[u]`` (C bool) the classes its
    corpus annotates: the loss is restricted to them (:func:`partial_logits`).

    With ``teachers`` (models trained on the same utterances, e.g. other seeds) and
    ``cfg.distill_weight`` > 0, the loss mixes the labels with the teachers' ensemble
    prediction on the very same augmented batch (knowledge distillation): one model, close
    to what the ensemble would score."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    model = LightSERNet(num_classes, dropout=cfg.dropout, input_norm=cfg.input_norm)
    model = model.to(device, memory_format=torch.channels_last)
    ema = copy.deepcopy(model) if cfg.ema_decay else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    weight = None
    if cfg.class_balanced:
        counts = np.bincount(labels[utt_ids], minlength=num_classes).astype(np.float64)
        w = counts.sum() / np.maximum(counts, 1) / num_classes
        weight = torch.tensor(w, dtype=torch.float32, device=device)[None, :]
    sampler = EpochSampler(data, utt_ids, cfg, cfg.seed, labels=labels, groups=groups)
    distill = bool(teachers) and cfg.distill_weight > 0
    if distill:
        teachers = [t.to(device).eval() for t in teachers]
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        picks = sampler.epoch()
        n_batches = math.ceil(len(picks) / cfg.batch_size)
        total, correct, seen = 0.0, 0, 0
        for b in range(n_batches):
            rows = np.sort(picks[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch, b / n_batches)
            x = torch.from_numpy(data.features[rows].astype(np.float32))
            y_idx = torch.from_numpy(labels[data.utt[rows]].astype(np.int64))
            x, y_idx = x.to(device), y_idx.to(device)
            mask = (torch.from_numpy(allowed[data.utt[rows]]).to(device)
                    if allowed is not None else None)
            y = F.one_hot(y_idx, num_classes).float()
            if cfg.label_smoothing:
                spread = (mask.float() / mask.sum(-1, keepdim=True) if mask is not None
                          else 1.0 / num_classes)
                y = y * (1 - cfg.label_smoothing) + cfg.label_smoothing * spread
            if cfg.time_masks or cfg.freq_masks:
                x = spec_augment(x.cpu(), cfg, gen).to(device)
            if cfg.mixup_alpha and len(rows) > 1:
                lam = float(np.random.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                perm = (mix_partner(groups[data.utt[rows]], gen) if groups is not None
                        else torch.randperm(len(rows), generator=gen)).to(device)
                x = lam * x + (1 - lam) * x[perm]
                y = lam * y + (1 - lam) * y[perm]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                logits = model(x)
            logits = logits.float()
            scored = partial_logits(logits, mask)
            if cfg.loss == "focal":
                loss = focal_loss(scored, y, cfg.focal_gamma, weight)
            else:
                loss = soft_ce(scored, y, weight)
            if distill:
                loss = ((1 - cfg.distill_weight) * loss + cfg.distill_weight
                        * distill_loss(logits, ensemble_logits(teachers, x), cfg.distill_temperature))
            if cfg.weight_decay:
                loss = loss + cfg.weight_decay * sum(
                    (p ** 2).sum() for n, p in model.named_parameters() if p.ndim > 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm, 1 - cfg.ema_decay)
                    for be, bm in zip(ema.buffers(), model.buffers()):
                        be.copy_(bm)
            total += float(loss.detach()) * len(rows)
            correct += int((scored.argmax(-1) == y_idx).sum())
            seen += len(rows)
        stats = {"epoch": epoch + 1, "loss": total / seen, "train_acc": correct / seen,
                 "lr": lr_at(cfg, epoch, 1.0)}
        history.append(stats)
        if on_epoch:
            on_epoch(epoch + 1, stats)
    final = ema if ema is not None else model
    final.eval()
    return TrainResult(final.to("cpu", memory_format=torch.contiguous_format), history)


def train_distilled(data: FeatureSet, labels: np.ndarray, utt_ids: np.ndarray, num_classes: int,
                    cfg: TrainConfig, on_epoch: Callable[[int, dict], None] | None = None,
                    groups: np.ndarray | None = None, allowed: np.ndarray | None = None
                    ) -> TrainResult:
    """:func:`train`, first training ``cfg.teachers`` teachers (the same recipe and data, seeds
    ``seed + 1`` ...) when asked, then the student distilled from their ensemble, then (with
    ``cfg.qat_epochs``) the student's int8 agreement fine-tuning (:mod:`training.qat`).
    ``on_epoch`` counts epochs over all of them (``cfg.total_epochs``)."""
    teachers = []
    for k in range(cfg.teachers):
        tcfg = replace(cfg, seed=cfg.seed + 1 + k, teachers=0, distill_weight=0.0)
        done = k * cfg.epochs
        cb = (lambda e, st, d=done: on_epoch(d + e, {**st, "phase": "teacher"})) if on_epoch else None
        teachers.append(train(data, labels, utt_ids, num_classes, tcfg, on_epoch=cb,
                              groups=groups, allowed=allowed).model)
    done = cfg.teachers * cfg.epochs
    cb = (lambda e, st: on_epoch(done + e, st)) if on_epoch else None
    result = train(data, labels, utt_ids, num_classes, cfg, on_epoch=cb, teachers=teachers or None,
                   groups=groups, allowed=allowed)
    result.teachers = [t.to("cpu").eval() for t in teachers]
    if cfg.qat_epochs:
        from training.qat import finetune_for_int8

        done = cfg.total_epochs - cfg.qat_epochs
        cb = (lambda e, st: on_epoch(done + e, {**st, "phase": "int8 fine-tune"})) if on_epoch else None
        result.model = finetune_for_int8(result.model, data, utt_ids, cfg, on_epoch=cb)
    return result


@torch.no_grad()
def predict_windows(model: torch.nn.Module, features: np.ndarray, batch: int = 256) -> np.ndarray:
    """Softmax probabilities per window (N, C)."""
    model.eval()
    out = []
    for i in range(0, len(features), batch):
        x = torch.from_numpy(features[i : i + batch].astype(np.float32))
        out.append(torch.softmax(model(x), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def pool_by_utterance(probs: np.ndarray, utt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean window probability per utterance: (utterance ids, (U, C))."""
    ids = np.unique(utt)
    return ids, np.stack([probs[utt == u].mean(axis=0) for u in ids])
