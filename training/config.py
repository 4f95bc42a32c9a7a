"""Training settings and presets: torch-free, so the CLI can build its options (and
``sernet predict`` / ``validate`` run) on an install without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


INPUT_NORMS = ("none", "cmn")  # LightSERNet's input normalisations
# int8 graphs (training.export.quantize_model; the first is the default). Named here, torch- and
# onnx-free, because the int8 fine-tuning (training/qat.py) simulates the chosen graph's roundings
INT8_RECIPES = ("input-stage-fp32", "fused-relu", "input-convs-fp32", "fused-relu-fp32-pools")


def variant_names(text: str) -> tuple[str, ...]:
    """The augmentation variants named in a comma-separated ``aug_variants`` ("" = none named)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-6       # L2, added to the loss as in Keras' kernel_regularizer
    schedule: str = "paper"           # paper | onecycle
    decay_start: int = 50
    decay_every: int = 20
    decay_rate: float = 0.15          # lr *= exp(-decay_rate) every decay_every epochs
    loss: str = "ce"                  # ce | focal
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_balanced: bool = False
    mixup_alpha: float = 0.0
    time_masks: int = 0
    time_mask_frames: int = 16
    freq_masks: int = 0
    freq_mask_bins: int = 5
    augment: bool = False             # sample waveform-augmentation variants, not only clean
    clean_prob: float = 0.4
    aug_variants: str = ""            # comma-separated variants to sample from; "" = all cached
    random_crop: bool = False         # a random window of the utterance, not the first/centre one
    ema_decay: float = 0.0
    dropout: float = 0.3
    input_norm: str = "none"          # none | cmn (subtract each window's per-coefficient mean)
    teachers: int = 0                 # distil from this many models (seeds seed+1..) of the same recipe
    distill_weight: float = 0.0       # with teachers: weight of the teachers' soft targets
    distill_temperature: float = 2.0  # softmax temperature of the distillation term
    qat_epochs: int = 0               # int8 agreement fine-tuning after training (training/qat.py)
    qat_lr: float = 1e-4
    qat_windows: int = 1024           # training windows per fine-tuning epoch
    qat_mismatch: float = 1.0         # weight of the simulated-int8 vs fp32 logit difference
    int8_recipe: str = INT8_RECIPES[0]  # the int8 graph exported, and simulated by the fine-tuning
    epoch_utterances: int = 0         # utterances drawn per epoch by corpus/class balance; 0 = each once
    corpus_alpha: float = 0.5         # a corpus's share of an epoch ~ its size ** alpha (0 = equal)
    precision: str = "fp32"           # fp32 | bf16 (autocast of the forward pass; weights stay fp32)
    seed: int = 0
    threads: int = 0                  # torch intra-op threads; 0 = torch default
    device: str = "auto"              # auto (cuda when present) | cpu | cuda

    def __post_init__(self) -> None:
        choices = {"schedule": ("paper", "onecycle"), "loss": ("ce", "focal"),
                   "precision": ("fp32", "bf16"),
                   "input_norm": INPUT_NORMS, "int8_recipe": INT8_RECIPES}
        from training.augment import VARIANTS

        unknown = set(self.aug_variant_names) - set(VARIANTS) - {"clean"}
        if unknown:
            raise ValueError(f"aug_variants: unknown {', '.join(sorted(unknown))}; choose from "
                             f"{', '.join(v for v in VARIANTS if v != 'clean')}")
        if self.teachers < 0:
            raise ValueError(f"teachers must be >= 0, not {self.teachers}")
        if (self.teachers > 0) != (self.distill_weight > 0):
            raise ValueError("teachers and distill_weight go together: --teachers N needs "
                             "--distill-weight in (0, 1], and a distill weight needs teachers")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], not {self.distill_weight}")
        if self.qat_epochs < 0 or self.qat_windows < 1 or self.qat_lr <= 0 or self.qat_mismatch < 0:
            raise ValueError("qat_epochs must be >= 0, qat_windows >= 1, qat_lr > 0 and "
                             "qat_mismatch >= 0")
        if self.epoch_utterances < 0 or not 0.0 <= self.corpus_alpha <= 1.0:
            raise ValueError("epoch_utterances must be >= 0 and corpus_alpha in [0, 1]")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, not {self.distill_temperature}")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, name)!r}")

    @property
    def aug_variant_names(self) -> tuple[str, ...]:
        return variant_names(self.aug_variants)

    @property
    def total_epochs(self) -> int:
        """Epochs of all models trained for this config (teachers, the student, then its int8
        fine-tuning)."""
        return self.epochs * (1 + self.teachers) + self.qat_epochs

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "robust": TrainConfig(epochs=120, lr=2e-3, schedule="onecycle", weight_decay=1e-6,
                          label_smoothing=0.1, class_balanced=True, mixup_alpha=0.2,
                          time_masks=2, freq_masks=2, augment=True, random_crop=True,
                          ema_decay=0.99, qat_epochs=6, int8_recipe="fused-relu-fp32-pools"),
}
# several corpora: each epoch draws utterances so that no corpus or class dominates (a corpus's
# share ~ its size ** corpus_alpha, its classes equally), which replaces the class-balanced loss.
# bf16 autocast: 1.9x the training steps per CPU second (AVX-512 BF16), spent on 40 epochs
PRESETS["multi"] = replace(PRESETS["robust"], epochs=40, epoch_utterances=2048,
                           corpus_alpha=0.5, class_balanced=False, qat_epochs=3,
                           precision="bf16")


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
