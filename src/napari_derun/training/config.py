"""Training settings (:class:`TrainConfig`): schedule, objective, selection. Shared by the training
loop (:mod:`napari_derun.training`) and validation (:mod:`napari_derun.training.validation`)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    """Training settings; defaults follow the paper's recipe (Sec. 4).

    ``checkpointing`` recomputes each stage's activations in the backward pass
    (:func:`torch.utils.checkpoint.checkpoint`): same gradients, about half the peak
    memory (CPU, batch 4 × 128²: 1.3 GiB instead of 2.6 GiB peak RSS), ~ +25 % time.

    The learning rate of 0-based epoch ``e`` is ``lr`` for ``e < decay_start`` and
    ``lr · decay ** ((e − decay_start) // decay_every + 1)`` afterwards: × ``decay`` once
    ``decay_start`` epochs are done and again every ``decay_every`` epochs (paper: × 0.9
    every 10 epochs after epoch 50). For short runs scale the three fields, or use
    :meth:`for_epochs`.

    A pydantic model: every field is type-checked and range-checked when the config is made or
    changed (``TrainConfig(batch=0)`` raises a ``ValueError`` naming the field), and unknown keys
    are refused everywhere (constructor and :meth:`from_dict`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="learning rate (Adam)")
    betas: tuple[float, float] = (0.9, 0.999)
    batch: int = Field(4, ge=1, description="patches per step")
    epochs: int = Field(150, ge=1, description="epochs")
    decay_start: int = Field(50, ge=0)
    decay_every: int = Field(10, ge=1)
    decay: float = Field(0.9, gt=0, le=1, description="lr factor per decay step")
    gamma: float = Field(10.0, ge=0, allow_inf_nan=False)
    adjoint_weight: float = Field(0.01, ge=0, allow_inf_nan=False)
    patch: int = Field(128, ge=16, description="patch side in pixels (>= 16)")
    steps_per_epoch: int | None = Field(None, ge=1, description="steps per epoch (default: pairs / batch)")
    augment: bool = True
    seed: int = Field(0, description="seed of the patch sampling and initialisation")
    device: str = Field("auto", description="auto, cpu, cuda or mps")
    amp: bool = False
    num_threads: int | None = Field(None, ge=1)
    val_every: int = Field(1, ge=1)
    val_metrics: bool = True
    val_initial: bool = True
    max_seconds: float | None = Field(None, gt=0)
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    checkpointing: bool = True
    objective: Literal["paper", "fusion"] = Field(
        "fusion", description="fusion: intensity + max-gradient + SSIM + LGDE; paper: Eq. 14 (MSE + 10 LGDE), "
        "which prefers a copy of the structural image (docs/model.md)")
    target: Literal["max", "lift"] = Field(
        "max", description="intensity target of the fusion objective: max(a, b), or lift = a + (b above its "
        "median), for a salient image on a dark background over a bright structural image (GFP on phase contrast)")
    lift_gain: float = Field(
        1.0, ge=0, le=10, allow_inf_nan=False,
        description="gain g of the lift target a + g * relu(b - b0): above 1 it keeps more of b's contrast where a "
        "is bright as well (warm people in daylight infrared)")
    w_intensity: float = Field(5.0, ge=0, allow_inf_nan=False)
    w_gradient: float = Field(10.0, ge=0, allow_inf_nan=False)
    w_ssim: float = Field(1.0, ge=0, allow_inf_nan=False)
    w_lgde: float = Field(0.1, ge=0, allow_inf_nan=False)
    w_salient: float = Field(
        0.0, ge=0, allow_inf_nan=False,
        description="weight of the salient-contrast term (L1 to the target weighted by b above its background): "
        "keeps b's bright objects bright when training with degraded inputs")
    train_pad: int | None = Field(None, ge=0)
    select: Literal["rank", "loss"] = Field(
        "rank", description="keep the epoch with the best validation mean rank over 9 metrics, or the lowest loss")
    min_sr: float | None = Field(
        None, ge=0, le=2, allow_inf_nan=False,
        description="with select='rank': prefer epochs whose validation SR (the share of the salient image's "
        "contrast kept, docs/metrics.md) is at least this; an epoch below it is kept only if none reaches it")
    val_limit: int | None = Field(None, ge=1)
    degrade: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False,
        description="share of training patches whose inputs are degraded (noise, haze, low light, ... of their "
        "modality; the loss still compares with the clean pair): 0 trains on clean pairs only")
    modalities: tuple[str, str] | None = Field(
        None, description="(modality of a, modality of b) for degradation training where the pairs do not say "
        "(e.g. ('phase_contrast', 'fluorescence')); keys of napari_derun.data.degrade.MODALITIES")
    degrade_levels: tuple[int, int] = Field((1, 4), description="lowest and highest degradation level drawn (1..5)")
    photometric: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False,
        description="share of training patches with a random exposure change (gain and gamma) of a and, milder, "
        "of b, applied to the clean pair (targets included): daylight-like structural images from night scenes")
    guided: bool = True
    restore: int = Field(
        0, ge=0, le=256, description="channels of the input restoration network added to the model (0: none; "
        "a start model without one gets it zero-initialised, so training starts from that model's fusion)")
    train_only: Literal["all", "restore"] = Field(
        "all", description="all: every weight, on the objective; restore: only the input restoration network "
        "(needs restore > 0 and degrade > 0), towards the clean inputs (L1 of the restored a and b to the clean "
        "a and b), the fusion stages frozen: a learned restore-then-fuse that leaves the fusion of clean pairs as "
        "the start model's, at about a sixth of a full step's time per pixel")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="Adam (the paper's, with betas) or plain SGD")
    strategy: Literal["single", "ddp"] = Field(
        "single", description="single: this process; ddp: every process of a torchrun job, gradients averaged "
        "by DistributedDataParallel (batch is per process)")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= x < 1.0 for x in v):
            raise ValueError(f"Adam betas must be in [0, 1), got {v}")
        return v

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: tuple[str, str] | None) -> tuple[str, str] | None:
        if v is not None:
            from ..data.degrade import MODALITIES

            bad = [m for m in v if m not in MODALITIES]
            if bad:
                raise ValueError(f"unknown modalities {bad}; choose from {sorted(MODALITIES)}")
        return v

    @field_validator("degrade_levels")
    @classmethod
    def _levels(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 5:
            raise ValueError(f"degrade_levels must be 1 <= low <= high <= 5, got {v}")
        return v

    @classmethod
    def for_epochs(cls, epochs: int, **kw: Any) -> "TrainConfig":
        """The paper's schedule scaled to ``epochs``: decay after a third of them, then every 1/15
        (50 and 10 for 150 epochs). The one place for this rule (the CLI uses it)."""
        kw.setdefault("decay_start", max(1, round(epochs / 3)))
        kw.setdefault("decay_every", max(1, round(epochs / 15)))
        return cls(epochs=epochs, **kw)

    def fusion_weights(self):
        """The :class:`~napari_derun.core.objectives.FusionWeights` of the ``"fusion"`` objective."""
        from ..core.objectives import FusionWeights

        return FusionWeights(self.w_intensity, self.w_gradient, self.w_ssim, self.w_lgde, self.target,
                             salient=self.w_salient, lift_gain=self.lift_gain)

    def loss(self, x, a, b, b_floor=None):
        """``(loss, parts)`` of the configured objective."""
        from ..core.objectives import objective_loss

        return objective_loss(self.objective, x, a, b, gamma=self.gamma, b_floor=b_floor,
                              weights=self.fusion_weights() if self.objective == "fusion" else None)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
        n = 0 if epoch < self.decay_start else (epoch - self.decay_start) // max(1, self.decay_every) + 1
        return float(self.lr * self.decay**n)

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["betas"] = list(self.betas)
        d["degrade_levels"] = list(self.degrade_levels)
        if self.modalities is not None:
            d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From :meth:`to_dict` (e.g. a checkpoint's stored config); unknown keys are refused."""
        return cls.model_validate(dict(d))
