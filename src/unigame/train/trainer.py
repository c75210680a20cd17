"""`Trainer`: the run scaffolding every post-training method shares.

One model with LoRA on its language model (everything else frozen), the training records as a
resumable batch stream, one understanding optimiser, and the run's bookkeeping: exact checkpoints
(weights, optimisers, data position, every random stream), metrics and progress, non-finite step
handling, several processes (DDP/FSDP) and bf16. A method subclasses it, builds its own parts in
`build_method`, and writes its algorithm in `train()`; the hooks below carry its extra state.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unigame.data.local import BadRecord, write_bad_records
from unigame.data.records import VQARecord
from unigame.train.batches import RecordBatches, training_records
from unigame.train.checkpoint import (
    capture_rng,
    checkpoint_dir,
    load_checkpoint,
    optimizer_state,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
)
from unigame.train.config import ConfigError, TrainConfig, config_diff
from unigame.train.distributed import Distributed, is_sharded, rank_seed
from unigame.train.protocol import UnifiedModel, check_unified_model
from unigame.train.run_logging import MetricsLogger, plot_training_curves
from unigame.train.signals import StopRequest

__all__ = ["NonFiniteRunError", "Trainer", "attach_lora", "merge_lora"]


class NonFiniteRunError(RuntimeError):
    """Too many consecutive non-finite steps: the run is diverging, not hitting one bad batch."""


def attach_lora(
    model: nn.Module, target_modules: str | list[str], r: int, alpha: float, dropout: float
) -> nn.Module:
    """Freeze every weight, then inject LoRA (peft) into `target_modules`, in place; return the PeftModel.

    The adapter keeps calling its own module tree, which now holds the LoRA layers; the PeftModel is
    what `save_pretrained` writes (loadable by `PeftModel.from_pretrained`).
    """
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none"
    )
    with warnings.catch_warnings():
        # Workaround: peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (a FutureWarning
        # on every run); drop this filter once peft uses `is_activation_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ValueError(f"lora_target_modules() = {target_modules!r} matched no module of the model.")
    return peft_model


def merge_lora(model: nn.Module, lora_dir: str | Path) -> None:
    """Merge a saved LoRA into `model`'s weights in place (its modules get the merged weights back)."""
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(model, str(lora_dir)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"model.merge_lora={str(lora_dir)!r} does not fit this model: {err}") from err
    if merged is not model:  # peft swaps the LoRA layers back for plain ones inside `model` itself
        raise RuntimeError("peft's merge_and_unload returned a new module; unigame expects an in-place merge")


class Trainer:
    """A post-training run's shared state and bookkeeping; subclasses add the method.

    Args:
        cfg: the run's config (validated here, before anything loads).
        run_dir: where metrics, plots, panels and checkpoints go.
        adapter: a `UnifiedModel`; None loads `cfg.model.path` (a Janus directory).
        records: training records; None reads those `cfg.data` names (ShapesWorld, or local files).
    """

    METRICS: tuple[str, ...] = ()  # per-step metrics, in CSV column order
    progress_name = "train"  # the progress bar's label
    progress_keys: tuple[str, ...] = ()  # metrics shown beside the bar every logging.log_every steps

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        adapter: UnifiedModel | None = None,
        records: list[VQARecord] | None = None,
    ) -> None:
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.adapter = adapter
        self.records = records
        self.step = 0  # completed steps
        self.nonfinite_steps = 0
        self.nonfinite_streak = 0  # consecutive non-finite steps, up to optim.max_nonfinite_steps
        self.bad_records: list[BadRecord] = []  # records left out of local data, with the reason
        self.logger: MetricsLogger | None = None
        self._progress: Any = None
        self.dist = Distributed()  # one process until `setup` reads the launcher's environment

    # ================================================================================ method hooks
    def build_method(self, probe: Tensor, model_path: Path | None) -> None:
        """Build the method's own parts (after the model, LoRA and batches; before the understanding
        optimiser). `probe`: one training image (1, 3, H, W); `model_path`: the loaded directory, if any."""

    def train(self, until_step: int | None = None, stop: StopRequest | None = None) -> None:
        """The method's algorithm: steps until `optim.steps` (or `until_step`), or until `stop` is set."""
        raise NotImplementedError

    def method_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters besides LoRA (broadcast from rank 0 like LoRA)."""
        return []

    def method_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers besides the understanding one (their gradients are dropped on a skipped step)."""
        return []

    def rank_generators(self) -> dict[str, tuple[torch.Generator, int]]:
        """Named random generators that ranks > 0 reseed (from the given seed) and checkpoints keep per rank."""
        return {}

    def method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Add the method's progress record to a checkpoint's tensors and JSON metadata, in place."""

    def load_method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any], path: Path) -> None:
        """Restore what `method_state` wrote (random streams are restored after this, last)."""

    def step_metrics(self, metrics: dict[str, float]) -> None:
        """Add the method's per-step state (logged on every step, skipped ones too), in place."""

    def panels(self) -> list[Path]:
        """The method's end-of-run pictures (rank 0, with `logging.plots`)."""
        return []

    def decodes_perturbed_latents(self) -> bool:
        """Whether the method decodes perturbed latents: then a bf16 decoder would round δ away."""
        return False

    # =================================================================================== setup
    def setup(self, resume: str | Path | None = None) -> None:
        """Build everything in dependency order, then restore `resume` (a checkpoint dir) if given."""
        cfg = self.cfg
        missing = cfg.path_errors(model=self.adapter is None)
        if missing:
            raise ConfigError(missing)
        # The process group first: it decides this process's device and its shard of every batch.
        self.dist = Distributed.from_environment(cfg.model.device)
        self.device = self.dist.device
        self.bf16 = cfg.model.precision == "bf16"
        self._check_launcher_precision()
        # Seeds first: LoRA's and the method's initial weights draw from torch's global RNG, so
        # every method starts from identical LoRA weights.
        _seed_everything(cfg.seed)

        # 0. The records, before the model: a broken dataset fails in seconds, not after a 7B load.
        #    (Reading them draws no global random numbers, so the seeding above still holds.)
        if self.records is None:
            self.records, self.bad_records = training_records(cfg.data)

        # 1. The model. Everything below sizes itself from it.
        model_path = None
        if self.adapter is None:
            from unigame.train.loading import load_adapter, resolve_model_path

            with self.dist.main_process_first():  # rank 0 builds a missing cached base, the others wait
                model_path = resolve_model_path(cfg.model)
                self.adapter = load_adapter(cfg.model, model_path)
        check_unified_model(self.adapter)
        self.adapter.model.to(self.device)
        if cfg.model.merge_lora is not None:
            merge_lora(self.adapter.model, cfg.model.merge_lora)

        # 2. LoRA on the language model only; every other weight frozen.
        self.peft_model = attach_lora(
            self.adapter.model,
            self.adapter.lora_target_modules(),
            cfg.model.lora_r,
            cfg.model.lora_alpha,
            cfg.model.lora_dropout,
        )
        self.adapter.model.eval()  # no dropout in the frozen parts...
        for name, module in self.peft_model.named_modules():
            if name.endswith("lora_dropout"):
                module.train()  # ...but LoRA's own dropout (paper 0.05) is on while training
        if cfg.model.gradient_checkpointing:
            _enable_activation_checkpointing(self.adapter.model)
        if self.bf16:
            # Frozen weights never update, so they need no fp32 master copy; the adapter's decoder stays
            # fp32 all the same, since bf16 would round the perturbation of z + δ away.
            _store_frozen_in_bf16(self.peft_model, keep=self._fp32_modules())
        # FSDP: shard the decoder layers after LoRA and the bf16 cast, since sharding replaces the
        # parameters; rank 0's LoRA weights are broadcast first, while they are still whole tensors.
        if self.dist.fsdp:
            self.dist.broadcast([p for p in self.peft_model.parameters() if p.requires_grad])
            self.dist.shard_language_model(self.peft_model)
        self.lora_parameters = [p for p in self.peft_model.parameters() if p.requires_grad]
        # What FSDP does not reduce itself (all of LoRA without FSDP, none with it) is averaged by hand,
        # like the perturber.
        self.replicated_lora = [p for p in self.lora_parameters if not is_sharded(p)]

        # 3. Batches: the iterator's position is part of the checkpoint.
        # data.batch_size is per process: every rank draws the same global batch and keeps its shard.
        self.batches = RecordBatches(
            self.records,
            cfg.data.batch_size * self.dist.world_size,
            cfg.data.split_seed,
            cfg.data.image_size,
            self.device,
            shard=self.dist.shard,
        )
        self._record_index = {r.id: i for i, r in enumerate(self.records)}
        probe = self.batches.batch([0]).pixels  # (1, 3, H, W): sizes the method's parts, checks image size
        self._check_image_size(probe)

        # 4. The method's own parts.
        self.build_method(probe, model_path)

        # 5. The understanding player's optimiser.
        self.opt_understand = torch.optim.AdamW(
            self.lora_parameters, lr=cfg.optim.und_lr, weight_decay=cfg.optim.weight_decay
        )

        # 6. Several processes: start from rank 0's weights, then give ranks > 0 their own dropout
        # streams (rank 0 keeps the one-process stream). Before the checkpoint, which restores them.
        if self.dist.world_size > 1:
            self.dist.broadcast([p for p in self.trainable_parameters() if not is_sharded(p)])
            if not self.dist.is_main:
                torch.manual_seed(rank_seed(cfg.seed, self.dist.rank))
                for generator, seed in self.rank_generators().values():
                    generator.manual_seed(rank_seed(seed, self.dist.rank))

        # 7. Restore a checkpoint (after everything exists), then open the logs at its step (rank 0 writes).
        resumed_step = self.load_checkpoint(resume) if resume is not None else None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.logger = MetricsLogger(self.run_dir, self.METRICS, cfg.logging.tensorboard, resumed_step)
            self._write_config()
            self._report_bad_records()

    def _fp32_modules(self) -> list[nn.Module]:
        """The adapter's modules that stay float32 in a bf16 run (its decoder, see the protocol)."""
        fp32_modules = getattr(self.adapter, "fp32_modules", None)
        if fp32_modules is not None:
            return list(fp32_modules())
        if self.decodes_perturbed_latents():
            warnings.warn(
                f"model.precision='bf16': {type(self.adapter).__name__} has no fp32_modules(), so its decoder "
                "is stored in bf16 like every frozen weight, and bf16 rounds a perturbation of ~1% of a latent "
                "token away. Add fp32_modules() returning the modules decode_latents runs "
                "(unigame.train.protocol.UnifiedModel), or set model.precision fp32.",
                stacklevel=3,
            )
        return []

    def _check_launcher_precision(self) -> None:
        launcher = self.dist.mixed_precision
        if launcher not in (None, "no") and launcher != self.cfg.model.precision:
            warnings.warn(
                f"the launcher asks for mixed precision {launcher!r}, but unigame takes precision from "
                f"model.precision={self.cfg.model.precision!r} (it keeps the perturber and the losses in fp32); "
                "set model.precision to change it.",
                stacklevel=3,
            )

    def _report_bad_records(self) -> None:
        """Name every record left out: a summary warning, and all of them in <run>/bad_records.jsonl."""
        if not self.bad_records:
            return
        path = write_bad_records(self.bad_records, self.run_dir / "bad_records.jsonl")
        ids = ", ".join(b.id for b in self.bad_records[:10]) + (" ..." if len(self.bad_records) > 10 else "")
        warnings.warn(
            f"data: {len(self.bad_records)} bad record(s) left out of {len(self.records) + len(self.bad_records)} "
            f"(ids: {ids}); each with its reason in {path}",
            stacklevel=3,
        )

    def _check_image_size(self, probe: Tensor) -> None:
        expected = getattr(self.adapter, "image_size", None)
        if isinstance(expected, int) and probe.shape[-1] != expected:
            raise ValueError(
                f"the model reads {expected} px images but the data gives {probe.shape[-1]} px; "
                f"set data.image_size {expected}."
            )

    # ============================================================================= step helpers
    def _finite(self, loss: Tensor) -> bool:
        """Whether `loss` is finite on every rank: all ranks skip or all step, never a hung all-reduce."""
        return self.dist.all_true(bool(torch.isfinite(loss)))

    def _clip_is_finite(self, parameters: list[nn.Parameter], max_norm: float) -> bool:
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return True
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return bool(torch.isfinite(norm))

    def _skip_step(self, metrics: dict[str, float], start: float) -> None:
        """A non-finite loss or gradient: no (further) update this step; count it and move on, unless
        it is the `optim.max_nonfinite_steps`-th in a row: then the run is diverging and stops."""
        self.nonfinite_steps += 1
        self.nonfinite_streak += 1
        for opt in (*self.method_optimizers(), self.opt_understand):
            opt.zero_grad(set_to_none=True)
        self.step += 1
        limit = self.cfg.optim.max_nonfinite_steps
        if self.nonfinite_streak >= limit:
            self.logger.log(self.step, {"nonfinite_steps": self.nonfinite_steps})
            raise NonFiniteRunError(
                f"aborting: {limit} consecutive steps ({self.step - limit + 1}-{self.step}) had a non-finite "
                f"loss or gradient (optim.max_nonfinite_steps={limit}). Nothing was saved for them; "
                f"resume from the last checkpoint in {self.run_dir / 'checkpoints'} with a lower "
                "optim.und_lr / optim.gen_lr or model.precision fp32, and check the data."
            )
        warnings.warn(f"step {self.step}: non-finite loss or gradient; step skipped", stacklevel=2)
        self._end_step(metrics, start)

    def _end_step(self, metrics: dict[str, float | Tensor], start: float) -> None:
        self.step_metrics(metrics)
        metrics = _as_floats(metrics)  # the step's one read-back of device values
        metrics["nonfinite_steps"] = self.nonfinite_steps
        metrics["step_seconds"] = time.perf_counter() - start
        metrics = self.dist.mean_metrics(metrics, self.METRICS)  # several processes: the mean over ranks
        if self.logger is not None:  # rank 0 only
            self.logger.log(self.step, metrics)
        if self._progress is not None:
            self._progress.update(1)
            if self.step % self.cfg.logging.log_every == 0:
                self._progress.set_postfix(
                    {k: f"{metrics[k]:.3g}" for k in self.progress_keys if k in metrics}
                )
        every = self.cfg.logging.checkpoint_every
        if every and self.step % every == 0 and self.step < self.cfg.optim.steps:
            self.save_checkpoint()

    def _open_progress(self, last: int) -> None:
        if self.cfg.logging.progress and self._progress is None and self.dist.is_main:
            from tqdm.auto import tqdm

            self._progress = tqdm(
                total=self.cfg.optim.steps, initial=self.step, desc=self.progress_name, dynamic_ncols=True
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked; the perturber turns it off for itself, losses are cast to fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def _lora_dropout(self, on: bool) -> Iterator[None]:
        dropouts = [m for name, m in self.peft_model.named_modules() if name.endswith("lora_dropout")]
        for m in dropouts:
            m.train(on)
        try:
            yield
        finally:
            for m in dropouts:
                m.train(not on)

    # ============================================================================ state and I/O
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The whole progress record (except LoRA, saved by peft): tensors + JSON metadata."""
        tensors, rng_meta = capture_rng()
        tensors.update(self._rank_rng_states())
        understand_tensors, understand_meta = optimizer_state(self.opt_understand, "optim.understand")
        tensors.update({k: self.dist.full_tensor(v) for k, v in understand_tensors.items()})  # FSDP: gathered
        meta: dict[str, Any] = {
            "step": self.step,
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_streak": self.nonfinite_streak,
            "data": self.batches.state_dict(),
            "rng": rng_meta,
            "optim": {"understand": understand_meta},
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
        }
        self.method_state(tensors, meta)
        return tensors, meta

    def save_checkpoint(self) -> Path:
        """Write the progress record atomically to `<run>/checkpoints/step-<step>` (rank 0 writes; every
        rank takes part, since the record holds each rank's random state, and waits for the write); a
        state holding NaN/Inf raises `NonFiniteStateError` and writes nothing."""
        tensors, meta = self.state_dict()
        lora = self._full_lora_state()
        path = checkpoint_dir(self.run_dir, self.step)
        if self.dist.is_main:
            path = save_checkpoint(
                self.run_dir,
                self.step,
                self.peft_model,
                tensors,
                meta,
                self.cfg.logging.keep_checkpoints,
                lora_state=lora,
            )
        self.dist.barrier()
        return path

    def _full_lora_state(self) -> dict[str, Tensor] | None:
        """FSDP: the whole LoRA weights, gathered to rank 0's CPU (every rank must call it; the others
        get an empty dict). None without FSDP, where peft reads them from the model itself."""
        if not any(is_sharded(p) for p in self.lora_parameters):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # ignore_frozen_params: only LoRA is gathered, not the 7B frozen weights.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(self.peft_model, options=options)

    def _rank_rng_states(self) -> dict[str, Tensor]:
        """Several processes: the random streams of ranks > 0 (dropout, the method's generators),
        gathered so that rank 0's checkpoint resumes every rank exactly. Empty in one process."""
        if self.dist.world_size == 1:
            return {}
        own = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        for name, (generator, _) in self.rank_generators().items():
            own[f"generator.{name}"] = generator.get_state()
        states: dict[str, Tensor] = {}
        for name, state in own.items():
            gathered = self.dist.gather(state[None])  # (W, S) uint8, one row per rank
            states.update({f"rank{r}.{name}": gathered[r].cpu() for r in range(1, self.dist.world_size)})
        return states

    def _restore_rank_rng(self, tensors: dict[str, Tensor], saved_world_size: int) -> None:
        if self.dist.world_size != saved_world_size:
            warnings.warn(
                f"resuming a {saved_world_size}-process checkpoint with {self.dist.world_size} processes: the "
                "global batch is now data.batch_size x the new process count, and ranks > 0 draw new dropout "
                "masks, so the run continues but does not repeat the original one exactly.",
                stacklevel=3,
            )
        prefix = f"rank{self.dist.rank}."
        if self.dist.is_main or prefix + "rng.torch" not in tensors:
            return
        torch.set_rng_state(tensors[prefix + "rng.torch"])
        if prefix + "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[prefix + "rng.cuda"], self.device)
        for name, (generator, _) in self.rank_generators().items():
            if f"{prefix}generator.{name}" in tensors:
                generator.set_state(tensors[f"{prefix}generator.{name}"])

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore everything `save_checkpoint` wrote; warn about config differences (this run's wins)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        ckpt = load_checkpoint(path)
        tensors, meta = ckpt.tensors, ckpt.meta
        self.check_resumable(meta["config"], ckpt.path)
        differences = config_diff(meta["config"], self.cfg.to_dict())
        if differences:
            warnings.warn(
                f"checkpoint {ckpt.path} was written with a different config; this run's config wins "
                "(weights, optimiser and RNG states, buffer and data position come from the checkpoint):\n  "
                + "\n  ".join(differences),
                stacklevel=2,
            )
        lora = load_file(str(ckpt.lora_path / "adapter_model.safetensors"), device=str(self.device))
        sharded = [p for p in self.lora_parameters if is_sharded(p)]
        if sharded:  # FSDP: every rank read the whole weights; keep this rank's shards (all laid out alike)
            lora = {k: self.dist.shard_like(v, sharded[0]) for k, v in lora.items()}
            tensors = self._shard_optimizer_state(tensors, "optim.understand", self.opt_understand)
        result = set_peft_model_state_dict(self.peft_model, lora)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint LoRA has weights this model lacks: {unexpected[:5]}")
        restore_optimizer(self.opt_understand, "optim.understand", tensors, meta["optim"]["understand"])
        self.batches.load_state_dict(meta["data"])
        self.load_method_state(tensors, meta, ckpt.path)
        self.step = int(meta["step"])
        self.nonfinite_steps = int(meta["nonfinite_steps"])
        self.nonfinite_streak = int(meta.get("nonfinite_streak", 0))  # absent in older checkpoints
        restore_rng(tensors, meta["rng"])  # last: nothing after this may draw random numbers
        self._restore_rank_rng(tensors, int(meta.get("world_size", 1)))  # ranks > 0: their own streams
        return self.step

    def check_resumable(self, saved_config: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another method: its state would not fit this one's."""
        saved = saved_config.get("method", "unigame")
        if saved != self.cfg.method:
            raise ValueError(
                f"checkpoint {path} was written by method={saved!r} but this run has method={self.cfg.method!r}; "
                "a run cannot switch methods on resume."
            )

    def _shard_optimizer_state(
        self, tensors: dict[str, Tensor], prefix: str, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        """FSDP: replace the saved whole optimiser moments of sharded parameters by this rank's shards."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        out = dict(tensors)
        for key, value in tensors.items():
            if key.startswith(prefix + "."):
                param = params[int(key[len(prefix) + 1 :].split(".", 1)[0])]
                if is_sharded(param) and value.shape == param.shape:  # moments, not the scalar step
                    out[key] = self.dist.shard_like(value, param)
        return out

    def _write_config(self) -> None:
        import yaml

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def write_report(self) -> list[Path]:
        """PNG plots of the run's curves and the method's panels (if `logging.plots`)."""
        if not self.cfg.logging.plots or not self.dist.is_main:
            return []
        self.logger.close()  # flush the CSV before reading it back
        written = plot_training_curves(self.logger.csv_path, self.run_dir / "plots")
        return written + self.panels()

    def cleanup(self) -> None:
        """Close the logs and the progress bar (safe to call twice)."""
        if self.logger is not None:
            self.logger.close()
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # ======================================================================== for tests/tools
    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA's and the method's trainable parameters (what gradient averaging and broadcast cover)."""
        return self.lora_parameters + self.method_parameters()

    def trainable_state(self) -> dict[str, Tensor]:
        """Copies of every trainable LoRA tensor keyed by name (methods add theirs)."""
        return {  # FSDP: gathered whole (a collective: every rank must call it)
            f"lora.{n}": self.dist.full_tensor(p.detach()).clone()
            for n, p in self.peft_model.named_parameters()
            if p.requires_grad
        }


def _store_frozen_in_bf16(model: nn.Module, keep: Sequence[nn.Module] = ()) -> None:
    """Store every frozen weight in bf16, and the floating buffers of modules whose weights are all
    frozen with them: norm kernels reject bf16 weights with fp32 running statistics (BatchNorm in
    Emu3's VQ). Buffers of weightless modules (rotary inverse frequencies) stay fp32, and so does
    everything inside `keep` (the adapter's `fp32_modules()`: the decoder that decodes z + δ)."""
    kept = {id(m) for root in keep for m in root.modules()}
    for module in model.modules():
        if id(module) in kept:
            continue
        own = list(module.parameters(recurse=False))
        frozen = [p for p in own if not p.requires_grad]
        for p in frozen:
            p.data = p.data.to(torch.bfloat16)
        if own and len(frozen) == len(own):
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point():
                    setattr(module, name, buffer.to(torch.bfloat16))


def _enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer layer's activations in the backward instead of storing them
    (transformers' activation checkpointing, non-reentrant, on every layer that supports it: the
    language model's, and the vision encoder's that the challenger's gradient also crosses)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):  # transformers < 5.x spelling
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ValueError(
            f"model.gradient_checkpointing=true needs a transformers model; {type(model).__name__} has no "
            "activation_checkpointing_enable. Set model.gradient_checkpointing false."
        )
    # Workaround: transformers checkpoints a layer only while `layer.training` is set, and the frozen
    # model runs in eval mode (no dropout). Setting the flag on the checkpointed layers alone (not their
    # children, whose dropouts read their own flags) turns checkpointing on and leaves dropout off.
    # Remove when transformers decouples checkpointing from training mode.
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True


def _as_floats(metrics: dict[str, float | Tensor]) -> dict[str, float]:
    """Metrics as floats; the 0-d tensors among them are read back in one copy. A method may hand its
    metrics over as tensors, so that a GPU step waits for the device once, here, and not at every
    metric it computes."""
    tensors = {name: value for name, value in metrics.items() if isinstance(value, Tensor)}
    if not tensors:
        return dict(metrics)
    values = torch.stack([t.detach().double().reshape(()) for t in tensors.values()]).tolist()
    return {**metrics, **dict(zip(tensors, values))}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
