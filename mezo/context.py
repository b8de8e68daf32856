"""Everything a trainer works with, set up once from the resolved flags: the process group, the
output folder and its first files, the task's splits, the model (PEFT modes applied, FSDP2
when distributed), the encoder and the metrics file."""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field

import torch

from mezo import distributed as D, models, peft_modes, resume, telemetry
from mezo.config import Config
from mezo.evaluation import evaluate, evaluate_with_loss
from mezo.results import headline
from mezo.scoring import Encoder, make_encoder
from mezo.splits import build_splits, check_requests, check_scaffold
from mezo.tasks import Splits, Task, get_task
from mezo.telemetry import log


@dataclass
class Run:
    cfg: Config
    device: torch.device
    main: bool                  # rank 0: writes the files, prints
    task: Task
    splits: Splits
    train_rows: list            # the task's raw train rows (ICL draws demonstrations from them)
    model: torch.nn.Module
    tok: object
    enc: Encoder
    metrics: telemetry.Metrics
    base: dict = field(default_factory=dict)    # the base model: name and weights fingerprint (trajectory header)
    memory: telemetry.MemoryLogger | None = None  # with --memory_logging, on the main rank

    def evaluate(self, step: int) -> dict:
        """The dev and test metrics now, and the dev loss (the task's training loss, also under
        --non_diff: what the reference's Trainer selects by), as an `evals` record."""
        bs = self.cfg.train.eval_batch_size
        dev, dev_loss = evaluate_with_loss(self.model, self.enc, self.splits.dev, bs, self.task.train_loss)
        rec = {"step": step, "dev": dev, "test": evaluate(self.model, self.enc, self.splits.test, bs),
               "dev_loss": dev_loss}
        log.info("step %d: dev %s (loss %s) test %s", step, rec["dev"], dev_loss, rec["test"])
        return rec

    def steps(self, desc: str, start: int, step, before_eval=None, after_step=None) -> None:
        """The loop every training trainer shares: for each step from `start`, step(i) (0-based)
        returns its record, which is logged (and shown on the progress bar); the model is
        evaluated every --eval_steps and after the last step (before_eval() first); then
        after_step(i + 1). The bar is closed before any error propagates, so that an error
        message is the last line."""
        t, bar = self.cfg.train, None
        if self.main:
            from tqdm.auto import tqdm
            bar = tqdm(total=t.max_steps, initial=start, desc=desc, dynamic_ncols=True)
        try:
            for i in range(start, t.max_steps):
                rec = step(i)
                self.metrics.step(rec)
                if bar:
                    bar.update(1)
                    bar.set_postfix({label: f"{rec[k]:{fmt}}" for k, label, fmt in
                                     (("loss", "loss", ".4f"), ("projected_grad", "g", ".3g"),
                                      ("time_forward_s", "fwd s", ".2f"), ("time_sweep_s", "sweep s", ".2f"))
                                     if k in rec})
                if (i + 1) % t.eval_steps == 0 or i + 1 == t.max_steps:
                    if before_eval:
                        before_eval()
                    self.metrics.eval(self.evaluate(i + 1))
                if after_step:
                    after_step(i + 1)
        finally:
            if bar:
                bar.close()

    def zero_shot(self) -> None:
        """The test metrics of the model as loaded, before training (unless --no_initial_eval)."""
        if self.cfg.train.no_initial_eval:
            return
        zs = {"test": evaluate(self.model, self.enc, self.splits.test, self.cfg.train.eval_batch_size)}
        self.metrics.data["zero_shot"] = zs
        self.metrics.save()
        log.info("zero-shot test %s", zs["test"])
        if self.main:
            print(f"zero-shot test {headline(zs['test'])}", flush=True)


def weights_dtype(cfg: Config) -> str:
    """The dtype the weights are loaded and kept in: --dtype, except backprop in fp16, which keeps
    fp32 weights and computes in fp16 under autocast (mixed precision, as Hugging Face Trainer's
    --fp16 in the reference's finetune.sh)."""
    return "fp32" if cfg.ft.amp else cfg.model.dtype


def allocator() -> str:
    """The C allocator of this process: a preloaded jemalloc / tcmalloc / mimalloc (its library
    is mapped), else the system's (glibc's malloc on Linux). It changes a CPU run's peak RSS, not
    its bits (BENCHMARKS.md section 9.6)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    return next((name for name in ("jemalloc", "tcmalloc", "mimalloc") if f"lib{name}" in maps), "system")


def experiment_config(cfg: Config, model, world: int, device) -> dict:
    import transformers
    total, trainable = models.count_params(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    m = cfg.model
    return {"args": {**cfg.flags, "use_master": cfg.zo.master_weights}, "task": cfg.data.task_name,
            "model_name": m.name, "mode": cfg.mode, "resolved_model": models.resolve(m.name, m.gguf_file)[0],
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "world_size": world, "device": f"{device} {name}", "dtype": m.dtype, "numerics": cfg.zo.numerics,
            "master_weights": cfg.zo.master_weights, "amp": cfg.ft.amp, "weights_dtype": weights_dtype(cfg),
            "num_params": total, "num_trainable_params": trainable,
            "allocator": allocator(), "command": " ".join(sys.argv)}


def build(cfg: Config) -> Run:
    """The set-up, in an order that protects what is on disk: the data is read and checked
    (every row of the splits used) and the model loaded and adapted before the output folder is
    touched, so bad input (errors.BadInput) leaves it as it was; only then is a run it holds
    deleted (--overwrite_output_dir) and the first files written."""
    device = D.init()
    world, main = D.world_size(), D.is_main()
    telemetry.setup_logging(None, main)  # stderr until the output folder is ready
    torch.manual_seed(cfg.train.seed)

    d, m = cfg.data, cfg.model
    task = get_task(d.task_name, family=d.family, **({} if d.family == "mlm" else {"text_column": d.text_column}))
    splits, train_rows = build_splits(d, task, cfg.train.trainer)  # reference sampling; LM-BFF k-shot for mlm
    check_requests(splits, cfg.train)
    tok = models.load_tokenizer(m.name, m.gguf_file, weights_dtype(cfg), m.task_family)
    check_scaffold(task, (splits.test or splits.train)[0], tok, m.max_length, m.task_family, m.max_new_tokens)

    t_load = time.time()
    model, tok = models.load(m.name, m.gguf_file, weights_dtype(cfg), device, m.task_family, tok=tok,
                             tie_emb=m.tie_emb)
    base = {"base_model": m.name, "base_fingerprint": models.fingerprint(model, models.DTYPES[m.dtype])}
    resume.check_base(cfg.checkpoint.plan, base)  # before the output folder is touched
    # LoRA / prefix / frozen (linear probe), before sharding
    model = peft_modes.prepare(cfg.peft, cfg.train.trainer, cfg.train.seed, model, tok)
    if D.launched_distributed():
        models.shard(model, device)
    t_load = time.time() - t_load

    out = cfg.output.dir
    deleted = []
    if main:
        if cfg.output.overwrite:
            deleted = telemetry.clear_run(out)
        os.makedirs(out, exist_ok=True)
    D.barrier()
    telemetry.setup_logging(out, main)
    if deleted:
        log.warning("--overwrite_output_dir: deleted the earlier run's %s in %s", ", ".join(deleted), out)
    if main:
        telemetry.write_json(os.path.join(out, "run_config.json"), dict(cfg.flags))
    log.info("task %s: %d train, %d dev, %d test (data: %s)", task.name, len(splits.train), len(splits.dev),
             len(splits.test), d.data_dir or "hub")
    log.info("model %s loaded in %.1fs (%s%s, world size %d%s)", m.name, t_load, weights_dtype(cfg),
             ", fp16 autocast" if cfg.ft.amp else "", world, ", FSDP2" if D.launched_distributed() else "")
    if main:
        telemetry.write_json(os.path.join(out, "experiment_config.json"), experiment_config(cfg, model, world, device))
    metrics = telemetry.Metrics(os.path.join(out, "training_metrics.json") if main else None,
                                every=cfg.output.log_steps)
    enc = make_encoder(tok, model, m.max_length, m.task_family, m.max_new_tokens)  # OPT first token 0, mlm / causal
    return Run(cfg, device, main, task, splits, train_rows, model, tok, enc, metrics, base)
