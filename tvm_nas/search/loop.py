"""The alternating search loop: warm-up, then weight steps interleaved with architecture steps; checkpoints.

Weight steps train the sampled path (one per block) on the training split; architecture steps update α on the
held-out validation split, either with the binarized gate gradients (``"gradient"``) or with REINFORCE
(``"reinforce"``). Every epoch ends with an atomic checkpoint, so ``fit(resume=True)`` continues to exactly
the result an uninterrupted run reaches.
"""

from __future__ import annotations

import io
import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..arch import write_arch
from ..config import SearchConfig
from ..data import ImageData, batches, endless_batches, train_val_split
from ..errors import TvmNasError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, exclusive, read_json
from ..profile.table import LatencyTable
from ..space import SearchSpace
from .derive import derive
from .loss import ExpectedLatency, latency_loss, pair_probs, reinforce_reward
from .supernet import Supernet, entropy

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"
ARCH_FILE = "final.arch.json"


@contextmanager
def _frozen(params):
    """Temporarily stop gradients to ``params`` (architecture steps need no weight gradients)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class ProxylessSearch:
    """ProxylessNAS search of one space against one target's latency table.

    Args:
        space: the search space.
        table: the latency table of the chosen target, measured for ``space``.
        data: the dataset (already at the space's input size).
        config: the search settings.
        run_dir: where config, checkpoints, the per-epoch log and the architecture file go.
        console: a ``rich`` console for progress, or None for silence.

    Attributes (after :meth:`fit`):
        supernet_: the trained :class:`Supernet`.
        probabilities_: final p per block (numpy arrays).
        arch_: the architecture document; ``arch_path_`` where it was written.
        history_: one dict per epoch (what ``log.jsonl`` holds).
    """

    def __init__(self, space: SearchSpace, table: LatencyTable, data: ImageData, config: SearchConfig,
                 run_dir: str | Path, console=None):
        self.space = space
        self.table = table
        self.data = data
        self.config = config
        self.run_dir = Path(run_dir)
        self.console = console

    # -- setup -------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        self.table.check_space(self.space)
        if len(self.data.classes) > self.space.num_classes:
            raise TvmNasError(f"--data {self.data.spec}: {len(self.data.classes)} classes exceed the space's "
                              f"num_classes={self.space.num_classes}")

    def effective_config(self) -> dict:
        return {"schema": 1, "search": self.config.model_dump(mode="json"), "space": self.space.describe(),
                "data": self.data.describe(),
                "latency_table": {"target": self.table.target.get("name"), "hash": self.table.hash,
                                  "path": None if self.table.path is None else str(self.table.path)}}

    def _build(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.supernet_ = Supernet(self.space)
        self.expected_ = ExpectedLatency(self.table, self.space)
        self.train_idx_, self.val_idx_ = train_val_split(len(self.data), cfg.val_fraction, cfg.seed)
        self.weight_opt_ = torch.optim.SGD(self.supernet_.weight_parameters(), lr=cfg.weight_lr,
                                           momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                                           weight_decay=cfg.weight_decay)
        self.weight_sched_ = torch.optim.lr_scheduler.CosineAnnealingLR(self.weight_opt_, T_max=cfg.epochs)
        self.arch_opt_ = torch.optim.Adam(self.supernet_.arch_parameters(), lr=cfg.arch_lr,
                                          betas=cfg.arch_betas, eps=cfg.arch_eps)
        self.baseline_: float | None = None
        self.history_: list[dict] = []
        self.epoch_ = 0

    # -- steps -------------------------------------------------------------------------------------------
    def weight_step(self, x: torch.Tensor, y: torch.Tensor, uniform: bool = False) -> tuple[float, float]:
        """Train the weights of one sampled path per block on a batch. Returns (loss, accuracy)."""
        net = self.supernet_
        net.train()
        net.sample_one(uniform=uniform)
        net.zero_grad(set_to_none=True)
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        loss.backward()
        self.weight_opt_.step()
        return float(loss.detach()), float((logits.argmax(1) == y).float().mean())

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One architecture update on a validation batch; returns the loss details."""
        if self.config.arch_update == "reinforce":
            return self._reinforce_step(x, y)
        cfg, net = self.config, self.supernet_
        net.train()
        net.zero_grad(set_to_none=True)
        net.sample_two()
        with _frozen(net.weight_parameters()):
            ce = F.cross_entropy(net(x), y)
        expected = self.expected_([pair_probs(m.alpha, m.pair()) for m in net.mixed_ops])
        loss, details = latency_loss(ce, expected, cfg.latency_budget_us, cfg.loss, cfg.mul_a, cfg.mul_b,
                                     cfg.add_lambda)
        loss.backward()
        net.set_alpha_grads()
        self.arch_opt_.step()
        net.rescale_alphas()
        return details

    def _reinforce_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        cfg, net = self.config, self.supernet_
        net.zero_grad(set_to_none=True)
        probs = net.probs()
        rewards, log_probs, lats, accs = [], [], [], []
        for _ in range(cfg.reinforce_nets):
            idx = [int(torch.multinomial(p.detach(), 1)) for p in probs]
            net.fix([m.candidates[i] for m, i in zip(net.mixed_ops, idx, strict=True)])
            with torch.no_grad():
                acc = float((net(x).argmax(1) == y).float().mean())
            lat = self.expected_.of_ops(idx)
            rewards.append(reinforce_reward(acc, lat, cfg.latency_budget_us, cfg.reinforce_w))
            log_probs.append(sum(torch.log(p[i]) for p, i in zip(probs, idx, strict=True)))
            lats.append(lat)
            accs.append(acc)
        if self.baseline_ is None:
            self.baseline_ = float(np.mean(rewards))
        advantages = [r - self.baseline_ for r in rewards]
        loss = -sum(a * lp for a, lp in zip(advantages, log_probs, strict=True)) / len(rewards)
        loss.backward()
        self.arch_opt_.step()
        d = cfg.reinforce_baseline_decay
        for r in rewards:
            self.baseline_ = d * self.baseline_ + (1 - d) * r
        return {"reward": float(np.mean(rewards)), "baseline": self.baseline_,
                "accuracy": float(np.mean(accs)), "sampled_latency_us": float(np.mean(lats)),
                "loss": float(loss.detach())}

    @torch.no_grad()
    def evaluate(self, ops: list[str] | None = None) -> float:
        """Validation accuracy of one net of the supernet (default: the most probable op per block)."""
        net = self.supernet_
        net.fix(ops or net.argmax_ops())
        net.eval()
        correct = 0
        for x, y in batches(self.data, self.val_idx_, 256):
            correct += int((net(x).argmax(1) == y).sum())
        net.train()
        return correct / len(self.val_idx_)

    # -- epochs ------------------------------------------------------------------------------------------
    def _run_epoch(self, epoch: int, progress=None) -> dict:
        cfg = self.config
        warm = epoch < cfg.warmup_epochs
        t0 = time.perf_counter()
        losses, accs, arch = [], [], []
        val_iter = endless_batches(self.data, self.val_idx_, cfg.batch_size, cfg.seed, epoch)
        n_steps = max(1, len(self.train_idx_) // cfg.batch_size)
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}" + (" (warm-up)" if warm else ""),
                                 total=n_steps) if progress else None
        for step, (x, y) in enumerate(batches(self.data, self.train_idx_, cfg.batch_size, cfg.seed, epoch,
                                              drop_last=True)):
            loss, acc = self.weight_step(x, y, uniform=warm)
            losses.append(loss)
            accs.append(acc)
            if not warm and (step + 1) % cfg.arch_every == 0:
                for _ in range(cfg.arch_steps):
                    arch.append(self.arch_step(*next(val_iter)))
            if progress:
                progress.update(task, advance=1)
        if progress:
            progress.remove_task(task)
        self.weight_sched_.step()
        net = self.supernet_
        probs = [p.detach() for p in net.probs()]
        record = {
            "epoch": epoch + 1, "phase": "warmup" if warm else "search",
            "train_loss": float(np.mean(losses)), "train_accuracy": float(np.mean(accs)),
            "val_accuracy": self.evaluate(),
            "expected_latency_us": float(self.expected_(probs)),
            "argmax_latency_us": self.table.predict(self.space, net.argmax_ops()),
            "entropy": [entropy(p) for p in probs],
            "ops": net.argmax_ops(),
            "probabilities": [[round(float(v), 6) for v in p] for p in probs],
            "weight_lr": self.weight_sched_.get_last_lr()[0],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if arch:
            record["arch"] = {k: float(np.mean([a[k] for a in arch])) for k in arch[0]}
        return record

    def fit(self, resume: bool = False, stop_after: int | None = None) -> ProxylessSearch:
        """Run (or continue) the search and derive the architecture.

        Args:
            resume: continue from ``run_dir/checkpoint.pt``; without it an existing checkpoint is an error.
            stop_after: stop after this many epochs in this call, without deriving (an interruption).

        Returns:
            self.
        """
        self._validate()
        ckpt = self.run_dir / CHECKPOINT
        with exclusive(ckpt, "search run"):
            self._build()
            if ckpt.exists():
                if not resume:
                    raise TvmNasError(f"{self.run_dir}: a search run is already there; add --resume to "
                                      "continue it or choose another --out")
                self._load_checkpoint(ckpt)
            elif resume and not (self.run_dir / CONFIG).exists():
                raise TvmNasError(f"{self.run_dir}: nothing to resume (no {CHECKPOINT})")
            atomic_write_json(self.run_dir / CONFIG, self.effective_config())
            done = 0
            with self._progress() as progress:
                while self.epoch_ < self.config.epochs:
                    if stop_after is not None and done >= stop_after:
                        return self
                    record = self._run_epoch(self.epoch_, progress)
                    self.history_.append(record)
                    self.epoch_ += 1
                    done += 1
                    self._save_checkpoint(ckpt)
                    self._print_epoch(record)
            self._derive()
        return self

    def _derive(self) -> None:
        self.probabilities_ = [p.detach().numpy().astype(np.float64) for p in self.supernet_.probs()]
        doc = derive(self.probabilities_, self.space, self.table, self.config.latency_budget_us,
                     self.config.enforce_budget)
        doc["search"] = {**self.config.model_dump(mode="json"), "data": self.data.describe(),
                         "run_dir": str(self.run_dir), "checkpoint": str(self.run_dir / CHECKPOINT),
                         "final_val_accuracy_supernet": self.history_[-1]["val_accuracy"] if self.history_
                         else None}
        self.arch_ = doc
        self.arch_path_ = write_arch(self.run_dir / ARCH_FILE, doc)

    # -- checkpoints -------------------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path) -> None:
        state = {
            "epoch": self.epoch_, "config": self.config.model_dump(mode="json"),
            "supernet": self.supernet_.state_dict(), "weight_opt": self.weight_opt_.state_dict(),
            "weight_sched": self.weight_sched_.state_dict(), "arch_opt": self.arch_opt_.state_dict(),
            "baseline": self.baseline_, "history": self.history_,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())
        atomic_write_text(self.run_dir / LOG, "".join(json.dumps(r) + "\n" for r in self.history_))

    def _load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if state["config"] != self.config.model_dump(mode="json"):
                raise TvmNasError(f"{path}: field 'config': the checkpoint was written with other settings; "
                                  f"resume with the run's own {CONFIG}")
            self.supernet_.load_state_dict(state["supernet"])
            self.weight_opt_.load_state_dict(state["weight_opt"])
            self.weight_sched_.load_state_dict(state["weight_sched"])
            self.arch_opt_.load_state_dict(state["arch_opt"])
            self.baseline_, self.history_, self.epoch_ = state["baseline"], state["history"], state["epoch"]
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
        except TvmNasError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is one clear line
            raise TvmNasError(f"{path}: corrupted checkpoint ({e.__class__.__name__}: {e}); "
                              "delete it to start the run over") from e

    # -- display -----------------------------------------------------------------------------------------
    @contextmanager
    def _progress(self):
        if self.console is None:
            yield None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            yield progress

    def _print_epoch(self, r: dict) -> None:
        if self.console is None:
            return
        self.console.print(
            f"epoch {r['epoch']:>3}/{self.config.epochs} {r['phase']:<6} loss {r['train_loss']:.3f} "
            f"train acc {r['train_accuracy']:.3f} val acc {r['val_accuracy']:.3f} "
            f"E[LAT] {r['expected_latency_us']:.1f} µs (budget {self.config.latency_budget_us:.1f}) "
            f"ops {' '.join(r['ops'])}")


def load_run_config(run_dir: str | Path) -> dict:
    """The effective config of an existing run directory (for ``--resume``)."""
    return read_json(Path(run_dir) / CONFIG, "search run config")
