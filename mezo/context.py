"""Everything a trainer works with, set up once from the resolved flags: the process group, the
output folder and its first files, the task's splits, the model (PEFT modes applied, FSDP2
when distributed), the encoder and the metrics file."""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

from mezo import distributed as D, models, peft_modes, telemetry
from mezo.evaluation import evaluate
from mezo.results import headline
from mezo.scoring import Encoder, make_encoder
from mezo.splits import build_splits
from mezo.tasks import Splits, Task, get_task
from mezo.telemetry import log


@dataclass
class Run:
    args: object
    device: torch.device
    main: bool                  # rank 0: writes the files, prints
    task: Task
    splits: Splits
    train_rows: list            # the task's raw train rows (ICL draws demonstrations from them)
    model: torch.nn.Module
    tok: object
    enc: Encoder
    metrics: telemetry.Metrics

    def evaluate(self, step: int) -> dict:
        """The dev and test metrics now, as an `evals` record."""
        bs = self.args.eval_batch_size
        rec = {"step": step, "dev": evaluate(self.model, self.enc, self.splits.dev, bs),
               "test": evaluate(self.model, self.enc, self.splits.test, bs)}
        log.info("step %d: dev %s test %s", step, rec["dev"], rec["test"])
        return rec

    def zero_shot(self) -> None:
        """The test metrics of the model as loaded, before training (unless --no_initial_eval)."""
        if self.args.no_initial_eval:
            return
        zs = {"test": evaluate(self.model, self.enc, self.splits.test, self.args.eval_batch_size)}
        self.metrics.data["zero_shot"] = zs
        self.metrics.save()
        log.info("zero-shot test %s", zs["test"])
        if self.main:
            print(f"zero-shot test {headline(zs['test'])}", flush=True)


def experiment_config(args, model, world: int, device) -> dict:
    import transformers
    total, trainable = models.count_params(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"args": vars(args), "task": args.task_name, "model_name": args.model_name, "mode": peft_modes.mode_name(args),
            "resolved_model": models.resolve(args.model_name, args.gguf_file)[0],
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "world_size": world, "device": f"{device} {name}", "dtype": args.dtype,
            "master_weights": args.use_master, "num_params": total, "num_trainable_params": trainable,
            "command": " ".join(sys.argv)}


def build(args) -> Run:
    device = D.init()
    world, main = D.world_size(), D.is_main()
    if main:
        os.makedirs(args.output_dir, exist_ok=True)
    D.barrier()
    telemetry.setup_logging(args.output_dir, main)
    if main:
        telemetry.write_json(os.path.join(args.output_dir, "run_config.json"),
                             {k: v for k, v in vars(args).items() if k != "use_master"})
    torch.manual_seed(args.seed)

    family = getattr(args, "task_family", "causal")
    task = get_task(args.task_name, family=family, **({} if family == "mlm" else {"text_column": args.text_column}))
    hub = (args.dataset, args.dataset_config) if args.dataset else (None, None)
    splits, train_rows = build_splits(args, task, hub)  # reference sampling; LM-BFF k-shot for mlm
    log.info("task %s: %d train, %d dev, %d test (data: %s)", task.name, len(splits.train), len(splits.dev),
             len(splits.test), args.data_dir or "hub")

    t_load = time.time()
    model, tok = models.load(args.model_name, args.gguf_file, args.dtype, device, family)
    model = peft_modes.prepare(args, model, tok)  # LoRA / prefix / frozen (linear probe), before sharding
    if D.launched_distributed():
        models.shard(model, device, args.fsdp_version)
    log.info("model %s loaded in %.1fs (%s, world size %d%s)", args.model_name, time.time() - t_load,
             args.dtype, world, ", FSDP2" if D.launched_distributed() else "")
    if main:
        telemetry.write_json(os.path.join(args.output_dir, "experiment_config.json"),
                             experiment_config(args, model, world, device))
    metrics = telemetry.Metrics(os.path.join(args.output_dir, "training_metrics.json") if main else None,
                                every=args.log_steps)
    enc = make_encoder(tok, model, args)  # OPT first token 0, context length, mlm / causal
    return Run(args, device, main, task, splits, train_rows, model, tok, enc, metrics)
