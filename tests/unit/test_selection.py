"""Which evaluation is a run's result (mezo/selection.py), and the dev loss's reduction
(mezo.evaluation.hf_eval_loss), on records built by hand."""
import math

import numpy as np
import pytest

from mezo import selection as S
from mezo.evaluation import HF_EVAL_BATCH, hf_eval_loss


def _ev(step, acc, loss, test):
    return {"step": step, "dev": {"accuracy": acc}, "test": {"accuracy": test}, "dev_loss": loss}


# dev loss lowest at step 200, dev accuracy highest at step 300 (tied with 400), test best at 100
EVALS = [_ev(100, 0.60, 0.70, 0.90), _ev(200, 0.70, 0.50, 0.80), _ev(300, 0.75, 0.55, 0.70),
         _ev(400, 0.75, 0.60, 0.60), _ev(500, 0.65, 0.65, 0.50)]


def test_the_lowest_dev_loss_is_selected_not_the_last():
    sel, criterion = S.select(EVALS, "dev_loss")
    assert (sel["step"], criterion) == (200, "dev_loss")
    final = S.final_record(EVALS, "dev_loss")
    assert final["test"] == {"accuracy": 0.80} and final["dev"] == {"accuracy": 0.70} and final["dev_loss"] == 0.50
    assert final["selected"] == {"step": 200, "criterion": "dev_loss", "dev": {"accuracy": 0.70},
                                 "test": {"accuracy": 0.80}, "dev_loss": 0.50}
    assert final["last"] == {"step": 500, "dev": {"accuracy": 0.65}, "test": {"accuracy": 0.50}, "dev_loss": 0.65}
    assert S.why(final, 5) == ("step 200: lowest dev loss 0.5000 of 5 evaluations; "
                               "the last (step 500) has test accuracy 0.5000")


def test_the_highest_dev_metric_is_selected_ties_keep_the_earliest():
    sel, criterion = S.select(EVALS, "dev_metric")
    assert (sel["step"], criterion) == (300, "dev_accuracy")  # 400 ties: HF / LM-BFF keep the first best
    tied = [_ev(1, 0.5, 0.3, 0.1), _ev(2, 0.5, 0.3, 0.2)]
    assert S.select(tied, "dev_loss")[0]["step"] == 1
    gen = [{"step": 1, "dev": {"f1": 0.2, "em": 0.9}, "test": {}}, {"step": 2, "dev": {"f1": 0.3, "em": 0.1}, "test": {}}]
    assert S.select(gen, "dev_metric") == (gen[1], "dev_f1")  # the headline metric (first key)


def test_last_and_the_fallbacks():
    assert S.select(EVALS, "last") == (EVALS[-1], "last")
    # no value to select by (no dev set, a non-finite loss, a run older than the dev loss): no candidate
    old = [{"step": 1, "dev": {"accuracy": 0.9}, "test": {"accuracy": 0.1}},
           {"step": 2, "dev": {"accuracy": 0.5}, "test": {"accuracy": 0.2}}]
    assert S.select(old, "dev_loss") == (old[1], "last")
    nan = [_ev(1, 0.5, math.nan, 0.1), _ev(2, 0.5, 0.9, 0.2), _ev(3, 0.5, None, 0.3)]
    assert S.select(nan, "dev_loss")[0]["step"] == 2
    nodev = [{"step": 5, "dev": {}, "test": {"accuracy": 0.4}, "dev_loss": None}]
    assert S.select(nodev, "dev_metric") == (nodev[0], "last")
    assert S.select([], "dev_loss") == (None, "dev_loss")
    assert S.final_record([], "dev_loss") == {"dev": {}, "test": {}, "dev_loss": None, "selected": None, "last": None}
    one = S.final_record(EVALS[:1], "dev_loss")
    assert one["selected"]["step"] == one["last"]["step"] == 100 and S.why(one, 1) == "step 100: the only evaluation"


def test_auto_is_the_reference_criterion_of_the_family():
    assert S.resolve("auto", "causal") == "dev_loss" and S.resolve("auto", "mlm") == "dev_metric"
    assert S.resolve("last", "mlm") == "last"
    with pytest.raises(ValueError, match="--selection_metric"):
        S.resolve("dev_acc", "causal")


def test_hf_eval_loss_by_hand():
    # classification (counts 1): the mean over samples, whatever the batches
    assert hf_eval_loss([1.0, 2.0, 3.0], [1, 1, 1], batch=2) == 2.0
    # lm (counts = gold tokens): each batch of 2 its token mean, weighted by its samples:
    # (2 * (3 + 4) / (1 + 4) + 1 * 10 / 2) / 3 = (2.8 + 5) / 3 = 2.6; neither the token mean
    # 17 / 7 nor the mean of per-sample token means (3 + 1 + 5) / 3
    assert hf_eval_loss([3.0, 4.0, 10.0], [1, 4, 2], batch=2) == pytest.approx(2.6, rel=1e-15)  # 2.6 has no exact binary form


def test_hf_eval_loss_is_the_trainers_repeat_then_truncate():
    """transformers' evaluation_loop: each batch's mean loss repeated eval_batch_size times,
    concatenated, cut to the number of samples, averaged. 21 samples: two full batches of 8 and
    one of 5, whose 8 repeats lose 3 to the cut."""
    rng = np.random.RandomState(0)
    values, counts = rng.rand(21) * 5, rng.randint(1, 6, 21).astype(float)
    batches = [slice(i, i + HF_EVAL_BATCH) for i in range(0, 21, HF_EVAL_BATCH)]
    repeated = np.concatenate([np.repeat(values[b].sum() / counts[b].sum(), HF_EVAL_BATCH) for b in batches])[:21]
    # numpy's pairwise mean vs math.fsum: sums of 21 doubles in another order, a few ulps apart
    assert hf_eval_loss(values.tolist(), counts.tolist()) == pytest.approx(repeated.mean(), rel=1e-13)
