"""The alternating search loop: warm-up, then weight steps interleaved with architecture steps; checkpoints.

Weight steps train the sampled path (one per block) on the training split; architecture steps update α on the
held-out validation split, either with the binarized gate gradients (``"gradient"``) or with REINFORCE
(``"reinforce"``). Every epoch ends with an atomic checkpoint, so ``fit(resume=True)`` continues to exactly
the result an uninterrupted run reaches: the paths are sampled from a generator seeded by (seed, epoch) and the
global generator (dropout) is reseeded every epoch, so no random state needs saving.

The search runs on a CPU or a GPU, in one process or several under torchrun (see :mod:`.distributed`). Weight
steps may run under autocast (``precision`` bf16/fp16); the architecture step, the expected latency and the
latency loss always run in fp32.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..arch import write_arch
from ..config import SearchConfig
from ..console import fmt_us
from ..console import progress as progress_bar
from ..data import MAX_UNREADABLE, FolderData, ImageData, batches, endless_batches, normalize, train_val_split
from ..errors import TvmNasError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, exclusive, read_json
from ..profile.model import LatencyModel
from ..records import CheckpointState, check
from ..space import SearchSpace
from .derive import derive, derive_by_shared_weights
from .distributed import Dist, autocast, grad_scaler, use_global_batchnorm
from .loss import ExpectedLatency, latency_loss, pair_probs, reinforce_reward
from .ranking import supernet_accuracies
from .supernet import Supernet, entropy

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"
ARCH_FILE = "final.arch.json"
CHECKPOINT_FORMAT = 2  # 1: pickled RNG states, loaded only with weights_only=False


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
        data: the dataset (in memory, or a streamed folder).
        config: the search settings.
        run_dir: where config, checkpoints, the per-epoch log and the architecture file go.
        console: a ``rich`` console for progress, or None for silence.
        dist: device and process group (default: one process on the CPU); only the main process writes files.

    Attributes (after :meth:`fit`):
        supernet_: the trained :class:`Supernet`.
        probabilities_: final p per block (numpy arrays).
        arch_: the architecture document; ``arch_path_`` where it was written.
        history_: one dict per epoch (what ``log.jsonl`` holds).
    """

    def __init__(self, space: SearchSpace, table: LatencyModel, data: ImageData | FolderData, config: SearchConfig,
                 run_dir: str | Path, console=None, dist: Dist | None = None):
        self.space = space
        self.table = table
        self.data = data
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = dist or Dist()
        self.console = console if self.dist.main else None

    # -- setup -------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        self.table.check_space(self.space)
        if len(self.data.classes) > self.space.num_classes:
            raise TvmNasError(f"--data {self.data.spec}: {len(self.data.classes)} classes exceed the space's "
                              f"num_classes={self.space.num_classes}")
        if self.config.batch_size % self.dist.world:
            raise TvmNasError(f"--batch-size: {self.config.batch_size} images cannot be shared equally by "
                              f"{self.dist.world} processes; use a multiple of {self.dist.world}")

    def effective_config(self) -> dict:
        return {"schema": 1, "search": self.config.model_dump(mode="json"), "space": self.space.describe(),
                "data": self.data.describe(),
                "latency_table": {"target": self.table.target.get("name"), "hash": self.table.hash,
                                  "path": None if self.table.path is None else str(self.table.path)},
                "runtime": {"device": self.dist.device.type, "processes": self.dist.world}}

    def setup(self) -> ProxylessSearch:
        """Build the supernet, its optimizers and the data split (what :meth:`fit` starts from); returns self.

        Called by :meth:`fit`; call it yourself to take single steps (:meth:`weight_step`, :meth:`arch_step`).
        """
        cfg, device = self.config, self.dist.device
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        self.supernet_ = Supernet(self.space).to(device)
        if cfg.global_batchnorm and self.dist.active:
            use_global_batchnorm(self.supernet_)
        self.expected_ = ExpectedLatency(self.table, self.space, device)
        self.train_idx_, self.val_idx_ = train_val_split(len(self.data), cfg.val_fraction, cfg.seed)
        self.weight_opt_ = torch.optim.SGD(self.supernet_.weight_parameters(), lr=cfg.weight_lr,
                                           momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                                           weight_decay=cfg.weight_decay)
        self.weight_sched_ = torch.optim.lr_scheduler.CosineAnnealingLR(self.weight_opt_, T_max=cfg.epochs)
        self.arch_opt_ = torch.optim.Adam(self.supernet_.arch_parameters(), lr=cfg.arch_lr,
                                          betas=cfg.arch_betas, eps=cfg.arch_eps)
        self.scaler_ = grad_scaler(device, cfg.precision)
        self.generator_ = torch.Generator()
        self.baseline_: float | None = None
        self.history_: list[dict] = []
        self.epoch_ = 0
        return self

    def _seed_epoch(self, epoch: int) -> None:
        """Path sampling: the same stream in every process; dropout: one stream per process and epoch."""
        self.generator_.manual_seed(int(np.random.SeedSequence([self.config.seed, epoch]).generate_state(1)[0]))
        torch.manual_seed(int(np.random.SeedSequence([self.config.seed, epoch, 1 + self.dist.rank])
                              .generate_state(1)[0]))

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.dist.device
        x = x.to(dev, non_blocking=True)
        return (normalize(x) if x.dtype == torch.uint8 else x), y.to(dev, non_blocking=True)

    # -- steps -------------------------------------------------------------------------------------------
    def weight_step(self, x: torch.Tensor, y: torch.Tensor, uniform: bool = False) -> tuple[float, float]:
        """Train the weights of one sampled path per block on a batch. Returns (loss, accuracy) on this batch."""
        net, cfg = self.supernet_, self.config
        net.train()
        net.sample_one(uniform=uniform, generator=self.generator_)
        net.zero_grad(set_to_none=True)
        # a streamed share whose images were all unreadable is empty: it still runs, so that every process
        # joins the same collectives (global BatchNorm, gradient averaging) with a zero loss
        with autocast(self.dist.device, cfg.precision):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing, reduction="sum")
        loss = loss / max(len(y), 1)
        (self.scaler_.scale(loss) if self.scaler_ else loss).backward()
        loss_v, acc = float(loss.detach()), float((logits.argmax(1) == y).float().mean()) if len(y) else 0.0
        self.dist.average_gradients(net.active_weight_parameters())
        if self.scaler_:
            self.scaler_.step(self.weight_opt_)
            self.scaler_.update()
        else:
            self.weight_opt_.step()
        return loss_v, acc

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One architecture update on a validation batch (fp32); returns the loss details."""
        if self.config.arch_update == "reinforce":
            return self._reinforce_step(x, y)
        cfg, net = self.config, self.supernet_
        net.train()
        net.zero_grad(set_to_none=True)
        net.sample_two(generator=self.generator_)
        with _frozen(net.weight_parameters()):
            ce = F.cross_entropy(net(x), y, reduction="sum") / max(len(y), 1)
        expected = self.expected_([pair_probs(m.alpha, m.pair()) for m in net.mixed_ops])
        loss, details = latency_loss(ce, expected, cfg.latency_budget_us, cfg.loss, cfg.mul_a, cfg.mul_b,
                                     cfg.add_lambda)
        loss.backward()
        net.set_alpha_grads()
        self.dist.average_gradients(net.arch_parameters())
        self.arch_opt_.step()
        net.rescale_alphas()
        return details

    def _reinforce_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        cfg, net = self.config, self.supernet_
        net.zero_grad(set_to_none=True)
        probs = net.probs()
        samples, correct = [], []
        for _ in range(cfg.reinforce_nets):
            idx = [int(torch.multinomial(p.detach().cpu(), 1, generator=self.generator_)) for p in probs]
            net.fix([m.candidates[i] for m, i in zip(net.mixed_ops, idx, strict=True)])
            with torch.no_grad():
                correct.append(float((net(x).argmax(1) == y).sum()))
            samples.append(idx)
        *correct, n = self.dist.sum([*correct, float(len(y))])  # every process scores the same nets
        rewards, log_probs, lats, accs = [], [], [], []
        for idx, c in zip(samples, correct, strict=True):
            acc = c / max(n, 1.0)
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
        net, dist = self.supernet_, self.dist
        net.fix(ops or net.argmax_ops())
        dist.broadcast_buffers(net)  # the main process's BatchNorm statistics, as DDP would
        net.eval()
        correct = n = 0
        for x, y in batches(self.data, self.val_idx_, 256, rank=dist.rank, world=dist.world, raw=True):
            if len(y):
                x, y = self._to_device(x, y)
                with autocast(dist.device, self.config.precision):
                    correct += int((net(x).argmax(1) == y).sum())
                n += len(y)
        net.train()
        correct, n = dist.sum([correct, n])
        if n == 0:
            raise TvmNasError(f"--data {self.data.spec}: no validation image could be read")
        return correct / n

    # -- epochs ------------------------------------------------------------------------------------------
    def _run_epoch(self, epoch: int, progress=None) -> dict:
        cfg, dist = self.config, self.dist
        warm = epoch < cfg.warmup_epochs
        self._seed_epoch(epoch)
        skipped0 = self.data.skipped
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        arch = []
        val_iter = endless_batches(self.data, self.val_idx_, cfg.batch_size, cfg.seed, epoch, rank=dist.rank,
                                   world=dist.world, raw=True)
        n_steps = max(1, len(self.train_idx_) // cfg.batch_size)
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}" + (" (warm-up)" if warm else ""),
                                 total=n_steps) if progress else None
        for step, (x, y) in enumerate(batches(self.data, self.train_idx_, cfg.batch_size, cfg.seed, epoch,
                                              drop_last=True, train=True, rank=dist.rank, world=dist.world,
                                              raw=True)):
            loss, acc = self.weight_step(*self._to_device(x, y),
                                         uniform=warm or cfg.weight_sampling == "uniform")
            if len(y):
                loss_sum, correct, seen = loss_sum + loss * len(y), correct + acc * len(y), seen + len(y)
            if not warm and (step + 1) % cfg.arch_every == 0:
                for _ in range(cfg.arch_steps):
                    arch.append(self.arch_step(*self._to_device(*next(val_iter))))
            if progress:
                progress.update(task, advance=1)
        if progress:
            progress.remove_task(task)
        train_seconds = time.perf_counter() - t0
        loss_sum, correct, seen, skipped = dist.sum([loss_sum, correct, seen, self.data.skipped - skipped0])
        if seen == 0:
            raise TvmNasError(f"--data {self.data.spec}: no training image could be read "
                              f"(e.g. {', '.join(self.data.bad_examples[:2]) or 'none listed'})")
        if skipped > MAX_UNREADABLE * (skipped + seen):
            raise TvmNasError(f"--data {self.data.spec}: {int(skipped)} of {int(skipped + seen)} images could not be "
                              f"read in epoch {epoch + 1} (more than {MAX_UNREADABLE:.0%}; e.g. "
                              f"{', '.join(self.data.bad_examples[:2]) or 'none listed'}); repair or remove them")
        self.weight_sched_.step()  # after the checks: no optimizer step was taken on unreadable data
        net = self.supernet_
        probs = [p.detach().cpu() for p in net.probs()]
        record = {
            "epoch": epoch + 1, "phase": "warmup" if warm else "search",
            "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "val_accuracy": self.evaluate(),
            "expected_latency_us": float(self.expected_(probs)),
            "argmax_latency_us": self.table.predict(self.space, net.argmax_ops()),
            "entropy": [entropy(p) for p in probs],
            "ops": net.argmax_ops(),
            "probabilities": [[round(float(v), 6) for v in p] for p in probs],
            "weight_lr": self.weight_sched_.get_last_lr()[0],
            "seconds": round(time.perf_counter() - t0, 3),
            "train_images": int(seen), "images_per_second": round(seen / train_seconds, 1),
            "skipped_images": int(skipped),
        }
        if arch:
            means = {k: float(np.nanmean([a[k] for a in arch])) for k in arch[0]}
            record["arch"] = dict(zip(means, (v / dist.world for v in dist.sum(list(means.values()))),
                                      strict=True))
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
        main = self.dist.main
        with exclusive(ckpt, "search run") if main else nullcontext():
            self.setup()
            log = self.run_dir / LOG
            if resume and not ckpt.exists() and not ckpt.is_symlink() and log.is_file() and log.stat().st_size:
                # epochs were checkpointed (the log is written with each checkpoint): starting over would replace
                # them and the finished run's files
                raise TvmNasError(f"{ckpt}: not found, yet {log} records finished epochs: the checkpoint was moved "
                                  "or deleted; put it back to continue, or start a new run in another --out")
            if ckpt.exists() or ckpt.is_symlink():  # a dangling or looping link is refused as not a regular file
                if not resume:
                    raise TvmNasError(f"{self.run_dir}: a search run is already there; add --resume to "
                                      "continue it or choose another --out")
                self._load_checkpoint(ckpt)
            elif resume and not (self.run_dir / CONFIG).exists():
                raise TvmNasError(f"{self.run_dir}: nothing to resume (no {CHECKPOINT})")
            self.dist.barrier()  # every process has read the run before the main one writes to it
            if main:
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
                    if main:
                        self._save_checkpoint(ckpt)
                    self._print_epoch(record)
            self._derive()
        return self

    def _derive(self) -> None:
        self.probabilities_ = [p.detach().cpu().numpy().astype(np.float64) for p in self.supernet_.probs()]
        cfg = self.config
        if cfg.derive == "shared" and cfg.enforce_budget:  # the candidates scored on the search's own split
            score = partial(supernet_accuracies, self.supernet_, self.data, val_fraction=cfg.val_fraction,
                            seed=cfg.seed, batch_size=cfg.batch_size)
            doc = derive_by_shared_weights(self.probabilities_, self.space, self.table, cfg.latency_budget_us,
                                           cfg.derive_candidates, score, cfg.budget_margin, cfg.fill_budget)
        else:
            doc = derive(self.probabilities_, self.space, self.table, cfg.latency_budget_us, cfg.enforce_budget,
                         cfg.budget_margin, cfg.fill_budget)
        doc["search"] = {**self.config.model_dump(mode="json"), "data": self.data.describe(),
                         "run_dir": str(self.run_dir), "checkpoint": str(self.run_dir / CHECKPOINT),
                         "runtime": {"device": self.dist.device.type, "processes": self.dist.world},
                         "final_val_accuracy_supernet": self.history_[-1]["val_accuracy"] if self.history_
                         else None}
        self.arch_ = doc
        self.arch_path_ = self.run_dir / ARCH_FILE
        left, filled = doc["derivation"]["undecided_blocks"], doc["derivation"]["filled_blocks"]
        if filled and not left and self.console is not None and self.dist.main:
            self.console.print(f"note: the most probable net ({doc['derivation']['argmax_latency_us']:.1f} µs) left "
                               f"part of the budget unused; {_blocks(filled)} given slower ops (fill_budget)")
        if left and self.console is not None and self.dist.main:
            self.console.print(
                f"[yellow]warning: α is still close to uniform in {len(left)} of {len(self.probabilities_)} "
                f"blocks ({', '.join(str(i) for i in left)}): there the chosen op is barely more probable than the "
                "others, so the searched net is partly chance; search longer (--epochs) or with a higher "
                f"--arch-lr (now {self.config.arch_lr:g})"
                + (f"; {_blocks(filled)} given slower ops to use the budget the most probable net left "
                   "(fill_budget)" if filled else ""))
        if self.dist.main:
            write_arch(self.arch_path_, doc)

    # -- checkpoints -------------------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path) -> None:
        # tensors, numbers, strings, lists and dicts only: the file loads with torch.load(weights_only=True)
        state = {
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch_, "config": json.dumps(self.config.model_dump(
                mode="json"), sort_keys=True),
            "supernet": self.supernet_.state_dict(), "weight_opt": self.weight_opt_.state_dict(),
            "weight_sched": self.weight_sched_.state_dict(), "arch_opt": self.arch_opt_.state_dict(),
            "scaler": self.scaler_.state_dict() if self.scaler_ else None,
            "baseline": self.baseline_, "history": json.dumps(self.history_),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())
        atomic_write_text(self.run_dir / LOG, "".join(json.dumps(r) + "\n" for r in self.history_))

    def _load_checkpoint(self, path: Path) -> None:
        """Continue from a checkpoint: loaded tensors-only, its plain fields checked as
        :class:`~tvm_nas.records.CheckpointState`, its state dicts by what loads them; any problem is one line."""
        if not path.is_file():
            raise TvmNasError(f"{path}: not a regular file, so not a checkpoint; delete it to start the run over")
        try:
            with warnings.catch_warnings():  # torch's pickle-protocol warning on a file it then refuses: the
                warnings.simplefilter("ignore")  # refusal is the one line said
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable or untrusted checkpoint is one clear line
            raise TvmNasError(f"{path}: corrupted checkpoint, or one holding objects other than tensors and plain "
                              f"data, which are never unpickled ({e.__class__.__name__}); delete it to start the run "
                              "over") from e
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TvmNasError(f"{path}: field 'format': not a checkpoint of this version of tvm-nas; delete "
                              "it to start the run over")
        ck = check(path, state, CheckpointState)
        if ck.config != self.config.model_dump(mode="json"):
            raise TvmNasError(f"{path}: field 'config': the checkpoint was written with other settings; "
                              f"resume with the run's own {CONFIG}")
        if ck.epoch > self.config.epochs:
            raise TvmNasError(f"{path}: field 'epoch': {ck.epoch} epochs done of the run's {self.config.epochs}; "
                              "delete it to start the run over")
        parts = [("supernet", self.supernet_), ("weight_opt", self.weight_opt_), ("weight_sched", self.weight_sched_),
                 ("arch_opt", self.arch_opt_)] + ([("scaler", self.scaler_)] if self.scaler_ and ck.scaler else [])
        for field, part in parts:
            try:
                part.load_state_dict(state[field])
            except Exception as e:  # noqa: BLE001 - a state of another shape, or damaged: one line naming it
                raise TvmNasError(f"{path}: field '{field}': does not fit this search ({e.__class__.__name__}); "
                                  "delete it to start the run over") from None
        bad = next((k for k, t in self.supernet_.state_dict().items()
                    if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            raise TvmNasError(f"{path}: field 'supernet.{bad}': not finite (NaN or infinite weights); delete it to "
                              "start the run over")
        self.baseline_, self.epoch_ = ck.baseline, ck.epoch
        self.history_ = json.loads(state["history"])  # checked above, as written (unread fields kept)

    # -- display -----------------------------------------------------------------------------------------
    def _progress(self):
        return nullcontext() if self.console is None else progress_bar(self.console, transient=True)

    def _print_epoch(self, r: dict) -> None:
        if self.console is None:
            return
        self.console.print(
            f"epoch {r['epoch']:>3}/{self.config.epochs} {r['phase']:<6} loss {r['train_loss']:.3f} "
            f"train acc {r['train_accuracy']:.3f} val acc {r['val_accuracy']:.3f} "
            f"E[LAT] {fmt_us(r['expected_latency_us'], 'µs')} (budget {fmt_us(self.config.latency_budget_us)}) "
            f"ops {' '.join(r['ops'])}")


def load_run_config(run_dir: str | Path) -> dict:
    """The effective config of an existing run directory (for ``--resume``)."""
    return read_json(Path(run_dir) / CONFIG, "search run config")


def _blocks(indices: list[int]) -> str:
    """'block 2 was' or 'blocks 0, 2 were', for the search's notes."""
    return f"block {indices[0]} was" if len(indices) == 1 else f"blocks {', '.join(map(str, indices))} were"
