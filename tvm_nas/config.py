"""Every setting that changes a result, one typed object per stage (validated once, written beside the result).

No torch or TVM here: the command line builds its options from these models and ``tvm-nas --help`` stays fast.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import TvmNasError

DEVICES = ("cpu", "cuda", "auto")  # auto: cuda when torch sees a GPU
PRECISIONS = ("fp32", "bf16", "fp16")


def budget_us_from_ms(ms: float) -> float:
    """The ``--latency-ms`` value in µs, checked: a finite number above 0.001 ms (1 µs).

    Raises:
        TvmNasError: zero, negative, infinite, NaN or at most 1 µs.
    """
    if not math.isfinite(ms) or ms <= 0.001:
        raise TvmNasError(f"--latency-ms: the budget must be a finite number of milliseconds above 0.001 (1 µs), "
                          f"got {ms}")
    return ms * 1000.0


BUDGET_MARGIN_PCT = 3.0  # a tuned table had 38 of the 39 tiny-cifar nets measured less than 3% over their prediction


class SearchConfig(BaseModel):
    """Every setting of a search; written to ``config.json`` in the run directory.

    Defaults follow the ProxylessNAS code (SGD + Nesterov + cosine + label smoothing for weights, Adam with
    betas (0, 0.999) for α), with epoch counts for a quick run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_budget_us: float = Field(gt=1.0, allow_inf_nan=False)
    epochs: int = Field(default=10, ge=1)
    warmup_epochs: int = Field(default=3, ge=0)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_samples: int | None = Field(default=None, ge=2)
    # weights
    weight_lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=4e-5, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    # architecture
    arch_update: Literal["gradient", "reinforce"] = "gradient"
    arch_lr: float = Field(default=1e-3, gt=0)
    arch_betas: tuple[float, float] = (0.0, 0.999)
    arch_eps: float = Field(default=1e-8, gt=0)
    arch_every: int = Field(default=1, ge=1, description="one round of architecture steps after this many "
                                                         "weight steps")
    arch_steps: int = Field(default=1, ge=1, description="architecture steps per round")
    loss: Literal["mul", "add", "hinge"] = "mul"
    mul_a: float = Field(default=0.2, gt=0)
    mul_b: float = Field(default=0.3, gt=0)
    add_lambda: float = Field(default=1.0, ge=0)
    reinforce_w: float = Field(default=0.1, ge=0)
    reinforce_nets: int = Field(default=4, ge=1)
    reinforce_baseline_decay: float = Field(default=0.99, ge=0, lt=1)
    enforce_budget: bool = True
    budget_margin: float = Field(
        default=BUDGET_MARGIN_PCT, ge=0, le=50, allow_inf_nan=False,
        description="percent of the budget kept for the table's error: the derived net is fitted to the budget "
                    "less this, so a net predicted just under the budget is not measured over it")
    # bench/search_quality.py on tiny-cifar: filling took the worst regret of the 27 scored searches to 3.4 points in
    # every variant (from up to 6.8); with no margin the median fell to 1.0-1.2, level with random search (README)
    fill_budget: bool = Field(
        default=True, description="spend what the derived net leaves of the budget (less the margin) on slower ops "
                                  "where α minds least: where α has not decided, the most probable net can use half "
                                  "the budget, and a slower net of the space is usually the more accurate")
    weight_sampling: Literal["alpha", "uniform"] = Field(
        default="alpha", description="the path each weight step trains after the warm-up: drawn from α "
                                     "(ProxylessNAS), or uniformly, so every candidate keeps training and the "
                                     "shared weights judge them alike")
    derive: Literal["argmax", "shared"] = Field(
        default="argmax", description="the net kept at the end: the most probable op per block (ProxylessNAS's "
                                      "path-level pruning, then fitted to the budget), or of the most probable "
                                      "nets meeting the budget the one the shared weights score best on the "
                                      "validation split")
    derive_candidates: int = Field(default=8, ge=1, le=4096, description="nets the shared-weight derivation "
                                                                           "chooses among")
    # execution settings that change the numbers (so --resume keeps them)
    threads: int = Field(default=0, ge=0, description="torch CPU threads per process (0: torch's choice)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="weight steps under autocast (bf16: CPU or CUDA, fp16: CUDA); α and the latency "
                                    "loss stay fp32")
    global_batchnorm: bool = Field(default=False, description="several processes: BatchNorm statistics over the "
                                                              "whole global batch, as in one process")

    @model_validator(mode="before")
    @classmethod
    def _warmup_follows_epochs(cls, data):
        """No --warmup-epochs: a third of the epochs, at most 3 (10 epochs: 3), so a short run still searches."""
        if isinstance(data, dict) and data.get("warmup_epochs") is None:
            data = {**data, "warmup_epochs": default_warmup(data.get("epochs", 10))}
        return data

    @model_validator(mode="after")
    def _search_happens(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warm-up takes all {self.epochs} epochs, so α would never be trained; use "
                             f"fewer --warmup-epochs than --epochs")
        return self


def default_warmup(epochs) -> int:
    """The warm-up epochs when none are given: a third of the search's epochs, at most 3."""
    return min(3, epochs // 3) if isinstance(epochs, int) and epochs > 0 else 3


class TrainConfig(BaseModel):
    """Settings of ``tvm-nas train`` (SGD + Nesterov, cosine schedule, label smoothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=4e-5, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_samples: int | None = Field(default=None, ge=2)
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


NO_TUNING_WITH_TIME = ("--trials 0 asks for no tuning (TVM's default schedules); give --trials N as well, or drop "
                      "--trials 0 to tune for the time alone")
"""``--time-budget`` beside ``--trials 0``: refused by ``profile`` and ``run`` alike."""

DEFAULT_RUN_TRIALS = 64  # the default run's tuning: about a minute per task on two cores


class RunConfig(BaseModel):
    """Settings of ``tvm-nas run`` (kept in the run's ``run.json``; ``--resume`` reuses them unchanged).

    The defaults make the embedded default job: this machine's CPU, the tiny space, scikit-learn's digits, a
    short search whose α moves fast enough to matter in a few epochs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: str = "tiny"
    target: str = "host"
    data: str = "builtin"
    test_data: str | None = Field(default=None, description="held-out images (same forms as --data, same class "
                                                            "folders) that no stage trains on: every accuracy is "
                                                            "measured there; without it the search's validation "
                                                            "split is used, labelled as such, and no net is ranked "
                                                            "(default none)")
    latency_ms: float | None = Field(default=None, gt=0.001, allow_inf_nan=False,
                                     description="latency budget in ms (default halfway between the space's "
                                                 "fastest and slowest nets)")
    trials: int | None = Field(default=None, ge=0, description="MetaSchedule trial budget of the profile (default "
                                                               f"{DEFAULT_RUN_TRIALS}; with --time-budget alone, none: "
                                                               "tune for the time)")
    time_budget: str | None = Field(default=None, description="tuning time of the profile, e.g. 20m (with --trials: "
                                                              "whichever ends first); a table made by `tvm-nas "
                                                              "profile --time-budget` with the same value is reused "
                                                              "as it is (default none)")
    logs_dir: str = "tuning_logs"
    epochs: int = Field(default=8, ge=1, description="search epochs")
    warmup_epochs: int | None = Field(default=None, ge=0, description="weight-only warm-up epochs (default a "
                                                                      "third of --epochs, at most 3)")
    train_epochs: int = Field(default=6, ge=1, description="training epochs of each net")
    arch_lr: float = Field(default=0.02, gt=0, description="Adam learning rate of α (a short run needs α to move "
                                                           "faster than the paper's 1e-3 over 90 epochs)")
    # bench/search_quality.py on tiny-cifar (ground truth of 39 nets trained alone): the additive form ended on
    # 'zero' in the last two blocks in 8 of 8 searches (median regret 11.2 points), the hinge 2.4 over 9; then with
    # every candidate trained alike and the net chosen by measurement, over 18 searches (3 budgets x 6 seeds, the
    # same shared weights for both forms) the multiplicative form (ProxylessNAS's) kept a better net than the hinge
    # in 4 and a worse one in none: median regret 0.90 against 1.87 (README, "Does the search find the best net?")
    loss: Literal["mul", "add", "hinge"] = "mul"
    # uniform: on the same ground truth, re-timed, the hinge with α-sampled weight steps ended twice on
    # 'mbconv_k5_e3 zero zero' (regret 6.8 points) and its supernet ranked the nets at τ +0.22; with every candidate
    # trained alike, worst regret 3.4 and τ +0.32 over 9 searches
    weight_sampling: Literal["alpha", "uniform"] = Field(
        default="uniform", description="the path each weight step trains after the warm-up: drawn from α, or "
                                       "uniformly (every candidate keeps training)")
    budget_margin: float = Field(default=BUDGET_MARGIN_PCT, ge=0, le=50, allow_inf_nan=False,
                                 description="percent of the budget kept for the table's error: the searched net "
                                             "is fitted to the budget less this")
    measure_budget: bool = Field(default=True, description="choose the searched net among nets derived around the "
                                                           "budget (less and plus --budget-margin) by their measured "
                                                           "latency on the target: the slowest whose measured median "
                                                           "meets the budget (--no-measure-budget: the table's "
                                                           "prediction alone)")
    seed: int = 0
    max_samples: int | None = Field(default=None, ge=2, description="use at most this many images of --data, a "
                                                                          "seeded subset (default all)")
    threads: int = Field(default=1, ge=1, description="torch threads for training (TVM jobs share the cores)")
    device: Literal["cpu", "cuda", "auto"] = Field(default="cpu", description="where search and training run "
                                                                              "(auto: cuda when torch sees a GPU)")

    @field_validator("time_budget")
    @classmethod
    def _tuning_is_asked_for_once(cls, v, info):
        if v is not None:
            from .console import parse_duration

            try:
                parse_duration(v)
            except TvmNasError as e:
                raise ValueError(str(e).removeprefix("--time-budget: ")) from None
            if info.data.get("trials") == 0:
                raise ValueError(NO_TUNING_WITH_TIME)
        return v

    @property
    def profile_trials(self) -> int:
        """The profile's trial budget: as given, else none beside a time budget, else :data:`DEFAULT_RUN_TRIALS`."""
        if self.trials is not None:
            return self.trials
        return 0 if self.time_budget is not None else DEFAULT_RUN_TRIALS

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_below_epochs(cls, v, info):
        """Said when the run starts, not at its search stage after the profile (as `search` does)."""
        epochs = info.data.get("epochs")
        if v is not None and epochs is not None and v >= epochs:
            raise ValueError(f"{v} warm-up epochs of {epochs} leave no architecture step: give fewer "
                             "--warmup-epochs than --epochs")
        return v

    def search(self, budget_us: float) -> SearchConfig:
        return SearchConfig(latency_budget_us=budget_us, epochs=self.epochs, warmup_epochs=self.warmup_epochs,
                            arch_lr=self.arch_lr, loss=self.loss, weight_sampling=self.weight_sampling,
                            budget_margin=self.budget_margin,
                            seed=self.seed, max_samples=self.max_samples)

    def train(self) -> TrainConfig:
        return TrainConfig(epochs=self.train_epochs, seed=self.seed, max_samples=self.max_samples)
