"""Who drafts the next SWITCH block, and how many tokens: a cost model over writer runs.

Drafted SWITCH (`rollout.switch`) pays, per round, one decode step of the drafter for each
drafted token plus one forward pass of the checker over the block. A round yields the
drafter's tokens up to the first position the other model writes, plus that one token (the
checker's own draw). So a good block is as long as the drafter's run is likely to go on,
weighed by what a drafted token and a check cost: a student draft is cheap to overshoot and
its check (a teacher pass) dear, so student blocks should be long; a teacher draft is dear to
overshoot and its check cheap.

`RunStats` keeps, for each writer, how often a run that has lasted n tokens goes on to n + 1
(one table for the response's first run, one for later runs: the threshold decays with the
position, so the first run is typically a long student run and later ones differ), learnt
from the writer masks of finished calls, with a prior and slow forgetting.

`DraftPolicy.choose` then takes, for both candidate drafters and every block length up to
the maximum, the expected tokens the round yields (averaged over the batch rows, each from its
own last writer and run so far) over its expected cost, and picks the best. The costs (per
drafted token, per check, per round outside the models) are running averages of times
measured in the generator's own rounds; until a model has been timed in a role, its check
stands in for its decode step and vice versa (a short block's pass costs about one step when
the models are small), and before any timing the parameter counts give a first guess.
Statistics and costs are refreshed every `refresh_runs` finished runs; in between the choice is
a fixed function of the rows' states and is remembered (it costs a dictionary lookup).

Only the schedule changes: every choice gives the same tokens (see `rollout.switch`).
"""

from __future__ import annotations

import itertools

import torch

STUDENT, TEACHER = 0, 1


class RunStats:
    """Continuation probabilities of writer runs: g[w, first, n] = P(run >= n + 1 | run >= n).

    n = 1 .. cap (index 0 unused; beyond cap the last value holds). Learnt by counting: a run of
    length L that ended because the other model took over adds n = 1 .. L-1 as continued and L as
    stopped; a run cut by the end of the response (EOS or the length limit) adds only 1 .. L-1.
    """

    def __init__(self, cap: int = 64, prior: float = 0.75, prior_weight: float = 0.1, forget: float = 0.995):
        self.cap, self.forget = cap, forget
        self.at_risk = torch.full((2, 2, cap + 1), prior_weight, dtype=torch.float64)
        self.continued = torch.full((2, 2, cap + 1), prior * prior_weight, dtype=torch.float64)

    def continuation(self) -> torch.Tensor:
        """g [2 writers, 2 (later, first), cap + 1]."""
        return self.continued / self.at_risk

    @staticmethod
    def runs(writers: torch.Tensor, lengths: torch.Tensor) -> list[tuple[int, int, int, bool]]:
        """(writer, first, length, ended) of every run in finished responses: writers [B, T] bool
        (True = teacher), lengths [B]. The last run of a response is cut (by EOS or the limit), not ended."""
        runs = []
        for row, n in zip(writers.tolist(), lengths.tolist()):
            groups = [(int(w), len(list(g))) for w, g in itertools.groupby(row[:n])]
            runs += [(w, int(i == 0), length, i < len(groups) - 1) for i, (w, length) in enumerate(groups)]
        return runs

    def update(self, runs: list[tuple[int, int, int, bool]]) -> None:
        """Count runs (from `runs`), forgetting older counts a little per run."""
        if not runs:
            return
        decay = self.forget ** len(runs)
        self.at_risk *= decay
        self.continued *= decay
        n_idx = torch.arange(self.cap + 1)
        for w, first, length, ended in runs:
            kept = ((n_idx >= 1) & (n_idx < min(length, self.cap + 1))).double()
            self.at_risk[w, first] += kept
            self.continued[w, first] += kept
            if ended and length <= self.cap:
                self.at_risk[w, first, length] += 1.0


class DraftPolicy:
    """Picks (drafter, block length) per round from RunStats and measured costs."""

    def __init__(self, student_params: int, teacher_params: int, smoothing: float = 0.2, refresh_runs: int = 32):
        scale = 1.0 / max(student_params, teacher_params)
        # seconds per drafted token, per check, per round outside the models; a prior in
        # relative units until the first measurement replaces it
        self.decode = [student_params * scale, teacher_params * scale]
        self.check = [student_params * scale, teacher_params * scale]
        self.overhead = 0.0
        self._measured = {"decode": [False, False], "check": [False, False], "overhead": False}
        self.smoothing = smoothing
        self.stats = RunStats()
        self.refresh_runs = refresh_runs
        self._pending: list = []  # runs seen since the last refresh
        self._memo: dict = {}  # choices under the current snapshot of costs and stats
        self._costs = (list(self.decode), list(self.check), self.overhead)

    def learn(self, writers: torch.Tensor, lengths: torch.Tensor) -> None:
        """Take the runs of finished responses (writers [B, T] bool, lengths [B]); every
        `refresh_runs` runs, update the statistics and the costs the choices use. Between refreshes
        the choices are a fixed function of the rows' states, so `choose` remembers them."""
        self._pending += RunStats.runs(writers, lengths)
        if len(self._pending) >= self.refresh_runs:
            self.stats.update(self._pending)
            self._pending = []
            self._refresh()

    def _refresh(self) -> None:
        self._memo.clear()
        self._costs = (list(self.decode), list(self.check), self.overhead)

    # ------------------------------------------------------------------ costs

    def _blend(self, old: float, new: float, seen: bool) -> float:
        return old + self.smoothing * (new - old) if seen else new

    def record_round(self, drafter: int, drafted: int, draft_s: float, check_s: float, total_s: float) -> None:
        """Times of one round: `drafted` decode steps of the drafter, one check by the other."""
        checker = 1 - drafter
        seen = self._measured
        before = (list(seen["decode"]), list(seen["check"]))
        if not (any(seen["decode"]) or any(seen["check"])):
            # the first measurement sets the scale of the prior for what is not measured yet
            scale = (draft_s / drafted) / self.decode[drafter] if drafted else check_s / self.check[checker]
            self.decode = [c * scale for c in self.decode]
            self.check = [c * scale for c in self.check]
        if drafted:
            self.decode[drafter] = self._blend(self.decode[drafter], draft_s / drafted, seen["decode"][drafter])
            seen["decode"][drafter] = True
        self.check[checker] = self._blend(self.check[checker], check_s, seen["check"][checker])
        seen["check"][checker] = True
        rest = max(total_s - draft_s - check_s, 0.0)
        self.overhead = self._blend(self.overhead, rest, seen["overhead"])
        seen["overhead"] = True
        # a model not yet seen in one role: a check of a short block costs about one decode step
        # (tiny models are overhead-bound), a far better guess than the parameter counts
        for m in (STUDENT, TEACHER):
            if seen["check"][m] and not seen["decode"][m]:
                self.decode[m] = self.check[m]
            elif seen["decode"][m] and not seen["check"][m]:
                self.check[m] = self.decode[m]
        if before != (seen["decode"], seen["check"]):  # a first measurement: the prior was a guess
            self._refresh()

    # ------------------------------------------------------------------ the choice

    def expected_tokens(self, drafter: int, last_writer: torch.Tensor, run: torch.Tensor,
                        first: torch.Tensor, k_max: int) -> torch.Tensor:
        """[k_max]: expected tokens a round yields with blocks of 1 .. k_max, mean over rows.

        last_writer [A] int (0 student, 1 teacher): who wrote the row's last token; run [A] >= 1:
        tokens of the row's current run; first [A] bool: that run is the response's first.
        """
        g = self.stats.continuation()  # [2, 2, cap + 1]
        cap = self.stats.cap
        steps = torch.arange(k_max)
        run = run.clamp(1, cap)
        first = first.long()
        own = last_writer == drafter
        # where the drafter wrote the last token, block token i comes iff its run reaches run + i;
        # elsewhere token 0 always comes (the checker's, if not the drafter's) and token i >= 1
        # iff the last writer's run stops now and the drafter's new run reaches i tokens
        idx_own = (run[:, None] + steps[None, :-1]).clamp(max=cap)  # [A, k_max - 1]: run + i
        new_run = g[drafter, 0].clone()
        new_run[0] = 1.0  # a new run has its first token; then it goes on after 1, 2, .. tokens
        cont = torch.where(
            own[:, None],
            g[drafter][first].gather(1, idx_own),
            new_run[steps[:-1].clamp(max=cap)][None, :],
        )
        ones = torch.ones(len(run), 1, dtype=torch.float64)
        surv = torch.cat([ones, cont.cumprod(1)], 1)  # [A, k_max]: P(block token i comes | the drafter writes token 0)
        stop_now = 1.0 - g[last_writer, first, run]  # [A]: the last writer's run ends at this position
        p_first = torch.where(own, torch.ones_like(stop_now), stop_now)  # the drafter writes token 0
        tokens = torch.cat([ones, 1.0 + p_first[:, None] * surv[:, 1:].cumsum(1)], 1)
        return tokens.mean(0)

    def choose(self, last_writer: torch.Tensor, run: torch.Tensor, first: torch.Tensor,
               k_max: tuple[int, int]) -> tuple[bool, int]:
        """(teacher drafts, block length) with the most expected tokens per second.

        last_writer [A] bool (True: the teacher), run [A], first [A] bool: see `expected_tokens`;
        k_max: the longest student and teacher blocks.
        """
        key = (tuple(last_writer.tolist()), tuple(run.tolist()), tuple(first.tolist()), k_max)
        if key in self._memo:
            return self._memo[key]
        decode, check, overhead = self._costs
        best = (-1.0, False, 1)
        for drafter in (STUDENT, TEACHER):
            k = max(1, int(k_max[drafter]))
            tokens = self.expected_tokens(drafter, last_writer.long(), run, first, k)
            blocks = torch.arange(1, k + 1, dtype=torch.float64)
            rate = tokens / (blocks * decode[drafter] + check[1 - drafter] + overhead)
            b = int(rate.argmax())
            if float(rate[b]) > best[0]:
                best = (float(rate[b]), drafter == TEACHER, b + 1)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = best[1:]
        return best[1:]
