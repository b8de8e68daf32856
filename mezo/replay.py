"""Rebuild fine-tuned weights from the base model and a trajectory, without forward passes.

    python -m mezo.replay --base MODEL --trajectory out/trajectory.jsonl --output out/replayed \
        [--gguf_file F] [--dtype fp32|bf16|fp16] [--steps K] [--allow_truncated] [--force] [--overwrite_output]

The result (save_pretrained, safetensors) is bit-identical to what training saved with
--save_model, on any number of training ranks: replay runs the same ZOEngine sweeps with the
same floating-point operations (see mezo.trajectory.replay). Settings (dtype, numerics,
distribution, z generator, kernel backend, the method: mezo, block and its blocks, fzoo) come from the trajectory header (a header without a
generator was written before generators were versioned: lowbias32-v1); overriding --dtype replays
with other rounding, so the result is then no longer bit-identical.
The trajectory's header names the base it was trained from and fingerprints its weights
(mezo.models.fingerprint); another --base is refused (--force replays onto it anyway). A
non-empty --output is refused unless --overwrite_output.
Exit codes: 0 done, 2 bad input (one line naming the flag / file).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mezo import errors

PROG = "python -m mezo.replay"


def _fail(msg: str):
    errors.die(msg, PROG)


def main(argv=None) -> int:
    from mezo import models
    from mezo import trajectory as T
    from mezo.telemetry import check_writable

    class P(argparse.ArgumentParser):
        def error(self, message):
            _fail(message)

    p = P(prog=PROG, description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", required=True, help="base model: hub id or local folder (as --model_name in training)")
    p.add_argument("--trajectory", required=True, help="trajectory.jsonl or its compact .bin form")
    p.add_argument("--output", required=True, help="folder for the rebuilt model (save_pretrained)")
    p.add_argument("--gguf_file", default=None, help="GGUF file inside --base's folder (as in training)")
    p.add_argument("--dtype", choices=sorted(models.DTYPES), default=None, help="default: the trajectory's")
    p.add_argument("--zo_backend", choices=["eager", "compile", "native"], default=None, help="default: the trajectory's")
    p.add_argument("--steps", type=int, default=None, help="replay only the first K steps")
    p.add_argument("--allow_truncated", action="store_true",
                   help="replay the complete lines of a trajectory whose last line was cut off")
    p.add_argument("--force", action="store_true",
                   help="replay onto a --base whose weights are not the trajectory's base (fingerprint differs)")
    p.add_argument("--overwrite_output", action="store_true", help="replace what a non-empty --output holds")
    a = p.parse_args(argv)

    if models.looks_local(a.base) and not os.path.exists(os.path.expanduser(a.base)):
        _fail(f"--base {a.base}: no such file or directory")
    if not os.path.isfile(a.trajectory):
        _fail(f"--trajectory {a.trajectory}: no such file")
    try:
        header, entries, _, truncated = T.read(a.trajectory, allow_truncated=a.allow_truncated)
    except (OSError, T.TrajectoryError) as e:
        _fail(f"--trajectory {e}" + (" (--allow_truncated replays the complete lines)" if "truncated" in str(e) else ""))
    if header.get("start_step", 0):
        _fail(f"--trajectory {a.trajectory}: starts at step {header['start_step']}, not at the base model")
    if a.steps is not None:
        if not 0 <= a.steps <= len(entries):
            _fail(f"--steps {a.steps}: the trajectory has {len(entries)} steps")
        entries = entries[:a.steps]
    try:
        check_writable("--output", os.path.dirname(os.path.abspath(a.output)) or ".")
    except errors.BadInput as e:
        _fail(str(e))
    if os.path.exists(a.output) and not os.path.isdir(a.output):
        _fail(f"--output {a.output}: a file, not a folder")
    if os.path.isdir(a.output) and os.listdir(a.output) and not a.overwrite_output:
        _fail(f"--output {a.output}: not empty ({len(os.listdir(a.output))} entries); pass --overwrite_output to "
              f"replace it, or another --output")
    generator = T.generator_of(header)
    from mezo import noise
    if generator not in noise.GENERATORS:
        _fail(f"--trajectory {a.trajectory}: written with z generator {generator!r}, which this version does not "
              f"have (it has {', '.join(noise.GENERATORS)})")
    dtype = a.dtype or header["dtype"]
    if dtype != header["dtype"]:
        print(f"{PROG}: warning: training ran in {header['dtype']}, replaying in {dtype}: not bit-identical",
              file=sys.stderr)

    import torch

    from mezo import methods
    from mezo.resume import saved_value
    from mezo.zo import ZOEngine
    torch.set_grad_enabled(False)
    t0 = time.time()
    # a masked LM loads as training loaded it (its decoder untied unless the header says tied),
    # and decays what training decayed
    family = "mlm" if models.infer_family(a.base, a.gguf_file) == "roberta" else "causal"
    model, tok = models.load(a.base, a.gguf_file, dtype, torch.device("cpu"), family,
                             tie_emb=saved_value(header, "tie_emb"))
    _check_base(a, header, model, dtype)
    engine = ZOEngine.from_model(model, dist=header["zo_dist"], backend=a.zo_backend or header.get("zo_backend", "eager"),
                                 fused=header.get("fused", True),
                                 numerics=saved_value(header, "numerics"),
                                 decay=models.decays(family, "mezo"), generator=generator)
    method = saved_value(header, "zo_method")
    methods.configure(engine, model, method, header.get("zo_blocks"))
    T.replay(engine, entries, method)
    models.save_full(model, tok, a.output, True)
    print(f"replayed {len(entries)} steps ({sum(e.skipped for e in entries)} skipped) onto {a.base} in "
          f"{time.time() - t0:.1f}s -> {a.output}")
    return 0


def _check_base(a, header: dict, model, dtype: str) -> None:
    """Refuse a --base that is not the model the trajectory was trained from (its weights'
    fingerprint), unless --force; trajectories written before the fingerprint get a warning."""
    from mezo import models
    want, trained = header.get("base_fingerprint"), header["dtype"]
    if not want:
        print(f"{PROG}: warning: {a.trajectory} records no fingerprint of its base (written before they were): "
              f"--base {a.base} cannot be checked against {header.get('model_name')!r}", file=sys.stderr)
        return
    if dtype != trained and dtype != "fp32":  # fp32 holds bf16 and fp16 weights exactly; bf16 and fp16 not each other
        print(f"{PROG}: warning: --dtype {dtype} cannot hold the {trained} base weights: --base {a.base} is not "
              f"checked against the trajectory's base", file=sys.stderr)
        return
    got = models.fingerprint(model, models.DTYPES[trained])
    if got != want:
        msg = (f"--base {a.base}: not the model the trajectory was trained from ({header.get('base_model')!r}, "
               f"weights fingerprint {want}; --base's is {got})")
        if not a.force:
            _fail(msg + "; --force replays onto it anyway")
        print(f"{PROG}: warning: {msg}: replaying anyway (--force)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
