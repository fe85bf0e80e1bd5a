"""Policy.decide: what follows each step (validate, save, stop, out of time, non-finite), and that
every input that can differ between processes is agreed through one all-reduce."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from charlstm.config import TrainConfig
from charlstm.distributed import DistContext
from charlstm.policy import ACCELERATOR_POLL_STEPS, Decision, Policy

LOSS = torch.tensor(1.0)


class ManualClock:
    """A clock that moves only when told to, and counts how often it is read."""

    def __init__(self) -> None:
        self.now = 100.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class OtherRank(DistContext):
    """One process standing in for rank 0 of two: the all-reduce combines this rank's flags with
    the ones `other` (rank 1, whose clock or loss may differ) would contribute, and counts calls."""

    def __init__(self, other: list[float]) -> None:
        super().__init__(rank=0, world_size=2)
        object.__setattr__(self, "other", torch.tensor(other))
        object.__setattr__(self, "calls", [])

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        self.calls.append(op)
        assert op == dist.ReduceOp.MAX
        tensor.copy_(torch.maximum(tensor, self.other))
        return tensor


def make_policy(clock=None, device="cpu", dist_context=None, total_steps=100, eval_interval=10, **options):
    config = TrainConfig(**{"checkpoint_seconds": 0.0, **options})
    return Policy(
        config,
        total_steps,
        eval_interval,
        torch.device(device),
        dist_context,
        clock or ManualClock(),
    )


def test_an_ordinary_step_does_nothing():
    assert make_policy().decide(3, LOSS, stop_requested=False) == Decision()


def test_validation_steps_validate_and_save():
    policy = make_policy(eval_interval=10)
    decision = policy.decide(20, LOSS, False)
    assert decision.validate and decision.save and not decision.ends_run


def test_early_validations_of_the_default_schedule():
    config = TrainConfig(checkpoint_seconds=0.0)
    policy = Policy(config, 100, 40, torch.device("cpu"), None, ManualClock(), frozenset({10, 20}))
    assert [s for s in range(1, 41) if policy.decide(s, LOSS, False).validate] == [10, 20, 40]


def test_checkpoint_interval_saves_without_validating():
    policy = make_policy(eval_interval=1000, checkpoint_interval=7)
    saves = [s for s in range(1, 30) if policy.decide(s, LOSS, False).save]
    assert saves == [7, 14, 21, 28]
    assert not policy.decide(14, LOSS, False).validate


def test_the_last_step_validates_saves_and_ends_nothing_else():
    decision = make_policy(total_steps=33, eval_interval=10).decide(33, LOSS, False)
    assert decision.validate and decision.save
    assert not decision.stop and not decision.out_of_time


def test_a_stop_request_saves_and_ends_without_validating():
    decision = make_policy(eval_interval=10).decide(10, LOSS, stop_requested=True)
    assert decision.stop and decision.ends_run and decision.save
    assert not decision.validate, "a signal saves at once, without a validation pass"


def test_out_of_time_validates_saves_and_ends():
    clock = ManualClock()
    policy = make_policy(clock, max_time=5.0)
    policy.start(0.0)
    clock.now += 4.9
    assert not policy.decide(1, LOSS, False).out_of_time
    clock.now += 0.2
    decision = policy.decide(2, LOSS, False)
    assert decision.out_of_time and decision.ends_run and decision.validate and decision.save


def test_a_resumed_run_keeps_the_time_it_had_used():
    clock = ManualClock()
    policy = make_policy(clock, max_time=5.0)
    policy.start(4.0)
    clock.now += 1.5
    assert policy.elapsed() == pytest.approx(5.5)
    assert policy.decide(1, LOSS, False).out_of_time


def test_checkpoint_seconds_saves_when_due_and_restarts_the_count():
    clock = ManualClock()
    policy = make_policy(clock, checkpoint_seconds=2.0, eval_interval=1000)
    policy.start(0.0)
    clock.now += 1.0
    assert not policy.decide(1, LOSS, False).save
    clock.now += 1.5
    assert policy.decide(2, LOSS, False).save
    policy.saved()
    clock.now += 1.0
    assert not policy.decide(3, LOSS, False).save, "the count restarts at each save"
    clock.now += 1.0
    decision = policy.decide(4, LOSS, False)
    assert decision.save and not decision.validate and not decision.ends_run


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_is_flagged(value):
    decision = make_policy().decide(1, torch.tensor(value), False)
    assert decision.non_finite
    assert not make_policy().decide(1, torch.tensor(2.5), False).non_finite


def test_on_an_accelerator_flags_are_read_every_few_steps_only():
    """Reading a flag back waits for an accelerator's queue: off validation and save steps the
    clock, the signal and the loss are looked at every ACCELERATOR_POLL_STEPS steps."""
    clock = ManualClock()
    policy = make_policy(clock, device="cuda", eval_interval=1000, max_time=1.0)  # a device object only
    assert policy.poll_steps == ACCELERATOR_POLL_STEPS > 1
    policy.start(0.0)
    clock.now += 10.0  # out of time, and a stop asked for, from the first step on
    reads = clock.reads
    for step in range(1, ACCELERATOR_POLL_STEPS):
        assert policy.decide(step, torch.tensor(math.nan), True) == Decision()
    assert clock.reads == reads, "the clock is not read between polls"
    decision = policy.decide(ACCELERATOR_POLL_STEPS, torch.tensor(math.nan), True)
    assert decision.stop and decision.out_of_time and decision.non_finite
    assert make_policy(device="cpu").poll_steps == 1


def test_flags_of_another_rank_are_agreed_with_one_all_reduce():
    """Rank 1's clock says a save is due, its loss is NaN and it received a signal; rank 0's
    clock and loss do not: rank 0 takes the same decision, from one all-reduce."""
    clock = ManualClock()
    # flags in the order the policy stacks them: stop, out of time, save due, non-finite, elapsed
    for other, check in [
        ([0.0, 0.0, 1.0, 0.0, 0.0], lambda d: d.save and not d.ends_run and not d.non_finite),
        ([0.0, 1.0, 0.0, 0.0, 0.0], lambda d: d.out_of_time and d.validate and d.save),
        ([1.0, 0.0, 0.0, 0.0, 0.0], lambda d: d.stop and d.save and not d.validate),
        ([0.0, 0.0, 0.0, 1.0, 0.0], lambda d: d.non_finite),
    ]:
        context = OtherRank(other)
        policy = make_policy(clock, dist_context=context, checkpoint_seconds=60.0, max_time=600.0)
        policy.start(0.0)
        decision = policy.decide(1, LOSS, stop_requested=False)
        assert check(decision), (other, decision)
        assert len(context.calls) == 1, "one collective a step, whatever is decided"


def test_the_elapsed_time_the_schedule_reads_is_the_latest_rank_s():
    """The learning rate follows the clock when --max-time is given: every rank must read the same time."""
    clock = ManualClock()
    policy = make_policy(clock, dist_context=OtherRank([0.0, 0.0, 0.0, 0.0, 42.0]), max_time=600.0)
    policy.start(5.0)
    assert policy.agreed_elapsed == 5.0, "a resumed run starts from the time it had used"
    clock.now += 3.0
    policy.decide(1, LOSS, False)
    assert policy.agreed_elapsed == pytest.approx(42.0)
    alone = make_policy(clock, max_time=600.0)
    clock.now += 7.0
    alone.decide(1, LOSS, False)
    assert alone.agreed_elapsed == pytest.approx(7.0)


def test_early_validations_are_partial_and_save_nothing():
    config = TrainConfig(checkpoint_seconds=0.0)
    policy = Policy(config, 100, 40, torch.device("cpu"), None, ManualClock(), frozenset({10, 20}))
    early, full = policy.decide(10, LOSS, False), policy.decide(40, LOSS, False)
    assert early.validate and early.partial and not early.save
    assert full.validate and not full.partial and full.save
    last = Policy(config, 10, 40, torch.device("cpu"), None, ManualClock(), frozenset({10}))
    assert not last.decide(10, LOSS, False).partial, "the last validation scores the whole text"


def test_a_step_with_nothing_to_poll_makes_no_collective():
    context = OtherRank([1.0, 1.0, 1.0, 1.0, 1.0])
    policy = make_policy(dist_context=context, device="cuda", eval_interval=1000)
    assert policy.decide(3, LOSS, False) == Decision()
    assert context.calls == [], "all ranks skip the same steps, so none waits for the others"


# Each of two gloo processes decides with its own clock (rank 0's runs faster), a signal that
# only rank 0 receives and a loss that is NaN on rank 1 only; both must take the same decisions.
TWO_CLOCKS = """
import json, sys
import torch
from charlstm.config import TrainConfig
from charlstm.distributed import setup, teardown
from charlstm.policy import Policy

ctx = setup("gloo", "cpu", 60.0)
now = [0.0]
config = TrainConfig(checkpoint_seconds=1.0, max_time=100.0)
policy = Policy(config, 1000, 1000, torch.device("cpu"), ctx, lambda: now[0])
decisions = []
for step in range(1, 9):
    now[0] += 0.3 if ctx.rank == 0 else 0.2
    loss = torch.tensor(float("nan") if ctx.rank == 1 and step == 7 else 1.0)
    decision = policy.decide(step, loss, stop_requested=ctx.rank == 0 and step == 5)
    if decision.save:
        policy.saved()
    decisions.append([step, decision.save, decision.stop, decision.non_finite, policy.agreed_elapsed])
with open(sys.argv[1] + f".{ctx.rank}", "w") as f:
    json.dump(decisions, f)
teardown(ctx)
"""


@pytest.mark.slow
def test_two_processes_with_different_clocks_take_the_same_decisions(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "two_clocks.py"
    script.write_text(TWO_CLOCKS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*launch, str(script), str(tmp_path / "decisions")],
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"decisions.{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    saves = [step for step, save, *_ in ranks[0] if save]
    assert saves[0] == 4, "rank 0's clock reached 1 s first: both save at its step"
    assert [step for step, _, stop, *_ in ranks[0] if stop] == [5]
    assert [step for step, _, _, non_finite, _ in ranks[0] if non_finite] == [7]
    assert [elapsed for *_, elapsed in ranks[0]][:2] == pytest.approx([0.3, 0.6]), "rank 0's faster clock"
