"""Benchmark forward + backward time of every registered preference loss against two baselines.

What is measured
    For each loss in ``mmpref.losses.PAIRWISE_LOSSES`` (scores ``[B]``) and ``mmpref.losses.LISTWISE_LOSSES``
    (scores, targets and a mask ``[B, K]``), each with its own defaults, plus ``ranklist`` with its other ``approx``
    form as an extra row ``ranklist[approx=...]`` (``"exact"`` while the default is ``"lse"``, and vice versa): the
    wall time of one ``loss(...).sum().backward()`` call, median of ``--repeats`` timed calls after warm-up calls,
    with ``time.perf_counter`` (and ``torch.cuda.synchronize`` around each call on CUDA). Every loss is called with
    ``beta=1.0``; ``margin`` also with ``margin=0.5``. The mask hides about 20% of the list entries and keeps at least
    two valid entries per list. Inputs are float32 and identical on every device (drawn once on the CPU, seed 0).

    Each row is compared with two baselines measured in the same run on the same tensors:

    * naive: a Python loop over the pairs (or over the lists, and inside each list over its positions or pairs),
      written from the loss's equation with scalar torch ops, then ``sum().backward()``. It is slow, so it is timed on
      the first 256 pairs / 64 lists and its time is scaled linearly to B (field ``naive_measured_on``). Before timing,
      the script checks that the naive loop and the loss agree (value and gradient) on that subset, so the speed-up is
      against a correct reference.
    * logsigmoid: a bare ``F.logsigmoid(x).sum().backward()``, the cheapest op a Bradley-Terry style loss can be
      built from; ``x`` is a leaf holding ``s_w - s_l`` (``[B]``) for pairwise rows and the ``[B, K]`` scores for
      listwise rows. It is timed call by call in turn with the loss, so that a slow spell of the machine hits both.

    Reported: ``speedup_vs_naive = naive_time / loss_time`` (target >= 50x) and
    ``ratio_vs_logsigmoid = loss_time / logsigmoid_time`` (target <= 3x), with a pass/fail per row.

    Two more timings give context and decide nothing (the verdict uses only the two targets above); both are timed
    call by call in turn with the loss and its logsigmoid baseline, and are ``None`` in rows they don't apply to:

    * pair logsigmoid, for listwise rows whose loss evaluates every pair of a list (``ranklist`` with ``skip=None``,
      both ``approx`` forms): a bare ``F.logsigmoid(d).sum().backward()`` with ``d`` a leaf ``[B, K(K-1)/2]`` holding
      ``s_j - s_i`` over the strictly-upper-triangle pairs ``i < j``, the tensor such a loss must at least touch once.
      Fields ``pair_logsigmoid_time_s`` and ``ratio_vs_pair_logsigmoid = loss_time / pair_logsigmoid_time``.
    * sort alone, for ``plackett_luce``: ``torch.sort(targets, dim=-1, descending=True)`` on the ``[B, K]`` targets
      (no backward: targets carry no gradient). Fields ``sort_time_s`` and
      ``sort_ratio_vs_logsigmoid = sort_time / logsigmoid_time``, the share of the logsigmoid budget a sort takes.

    Torch keeps its default thread count, which is recorded. Small-tensor CPU timings are at the mercy of other
    processes (a multi-threaded op waits a scheduler tick whenever one of its threads is preempted), so each row also
    records how many CPUs' worth of other work ran meanwhile (``other_cpu_load``, from /proc/stat); the report warns
    when it exceeds 0.1, and such a run should be repeated on an idle machine.

How to run
    python scripts/bench_losses.py                      # B = 4096, K = 16, CPU and (if available) CUDA
    python scripts/bench_losses.py --device cpu --repeats 50 --out-dir runs/bench_losses/

    Writes ``bench_losses.json`` and ``bench_losses.md`` to ``--out-dir`` (default ``runs/bench_losses/``) and prints
    the markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F

import mmpref.losses
from mmpref.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES
from mmpref.losses.listwise import RankListApprox

TARGET_SPEEDUP_VS_NAIVE = 50.0
TARGET_RATIO_VS_LOGSIGMOID = 3.0

BETA = 1.0
MARGIN = 0.5
# robust's own default, passed explicitly so that the loss and the naive loop cannot drift apart silently.
ROBUST_EPS = 0.1
# listnet's default target temperature; the naive loop below hard-codes the same value.
LISTNET_TEMPERATURE = 1.0
MASKED_FRACTION = 0.2
# Above this many CPUs' worth of other work during a row, its timings say more about the neighbours than the loss:
# on a shared 2-CPU box a multi-threaded op (logsigmoid on [B, K] is one) waits a whole scheduler tick per call.
OTHER_LOAD_WARN = 0.1

NAIVE_PAIRS = 256
NAIVE_LISTS = 64
WARMUP = 5
# The naive loops take milliseconds per call, so one warm-up and a few repeats already give a stable median.
NAIVE_WARMUP = 1
NAIVE_MAX_REPEATS = 5
# float32 sums of a few hundred terms: agreement well inside these bounds means both sides compute the same loss.
AGREE_REL_VALUE = 1e-4
AGREE_ABS_GRAD = 1e-4

EXTRA_PAIR_KWARGS: dict[str, dict[str, Any]] = {"margin": {"margin": MARGIN}, "robust": {"eps": ROBUST_EPS}}

Step = Callable[[], None]


# --------------------------------------------------------------------------------------------------------------------
# Naive references, written from each loss's equation with one scalar op at a time (no code shared with mmpref).
# --------------------------------------------------------------------------------------------------------------------


def _naive_bradley_terry(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(BETA * (s_w - s_l))


def _naive_hinge(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    return torch.clamp(1.0 - BETA * (s_w - s_l), min=0.0)


def _naive_ipo(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    return ((s_w - s_l) - 1.0 / (2.0 * BETA)) ** 2


def _naive_robust(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    x = BETA * (s_w - s_l)
    return -(1.0 - ROBUST_EPS) * F.logsigmoid(x) - ROBUST_EPS * F.logsigmoid(-x)


def _naive_margin(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(BETA * (s_w - s_l) - MARGIN)


NAIVE_PAIR_TERMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bradley_terry": _naive_bradley_terry,
    "hinge": _naive_hinge,
    "ipo": _naive_ipo,
    "robust": _naive_robust,
    "margin": _naive_margin,
}


def naive_pairwise(name: str, s_w: torch.Tensor, s_l: torch.Tensor, n: int) -> torch.Tensor:
    """Summed loss of the first ``n`` pairs, one Python iteration and a handful of scalar ops per pair."""
    term = NAIVE_PAIR_TERMS[name]
    return torch.stack([term(s_w[i], s_l[i]) for i in range(n)]).sum()


def _valid_entries(targets: torch.Tensor, mask: torch.Tensor, n: int) -> list[list[tuple[int, float]]]:
    """Per list, the (position, target) of its valid entries; targets carry no gradient, so Python floats do."""
    return [
        [(j, y) for j, (y, valid) in enumerate(zip(ys, ms, strict=True)) if valid]
        for ys, ms in zip(targets[:n].tolist(), mask[:n].tolist(), strict=True)
    ]


def naive_plackett_luce(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Σ_lists Σ_i [log Σ_{j≥i} exp(β s_π(j)) − β s_π(i)], π = valid entries best-first by target."""
    zero = scores.new_zeros(())
    per_list = []
    for b, valid in enumerate(_valid_entries(targets, mask, n)):
        # Python's sort is stable, so tied targets keep list order, the tie rule the loss documents.
        order = [j for j, _ in sorted(valid, key=lambda entry: -entry[1])]
        s = [BETA * scores[b, j] for j in order]
        nll = zero
        for i in range(len(s)):
            nll = nll + torch.logsumexp(torch.stack(s[i:]), dim=0) - s[i]
        per_list.append(nll)
    return torch.stack(per_list).sum()


def naive_listnet(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Σ_lists −Σ_j softmax(y / T)_j log softmax(β s)_j over the valid entries (0 for lists with < 2 of them)."""
    zero = scores.new_zeros(())
    per_list = []
    for b, valid in enumerate(_valid_entries(targets, mask, n)):
        if len(valid) < 2:
            continue
        s = [BETA * scores[b, j] for j, _ in valid]
        log_z = torch.logsumexp(torch.stack(s), dim=0)
        top = max(y for _, y in valid)
        weights = [math.exp((y - top) / LISTNET_TEMPERATURE) for _, y in valid]
        total = sum(weights)
        ce = zero
        for weight, s_j in zip(weights, s, strict=True):
            ce = ce - (weight / total) * (s_j - log_z)
        per_list.append(ce)
    return torch.stack(per_list).sum() if per_list else zero


def _naive_ranklist(
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, n: int, *, exact: bool
) -> torch.Tensor:
    """RankList with every pair compared (skip=None): item i against every valid item with a strictly lower target.

    exact: Σ_i Σ_{j∈W_i} log(1 + e^{β(s_j − s_i)}); lse: Σ_i log(1 + Σ_{j∈W_i} e^{β(s_j − s_i)}).
    """
    zero = scores.new_zeros(())
    per_list = []
    for b, valid in enumerate(_valid_entries(targets, mask, n)):
        total = zero
        for i, y_i in valid:
            diffs = [BETA * (scores[b, j] - scores[b, i]) for j, y_j in valid if y_j < y_i]
            if not diffs:
                continue
            if exact:
                for d in diffs:
                    total = total + torch.logaddexp(zero, d)
            else:
                # log(1 + Σ e^d) as a log-sum-exp with a 0 term for the "1".
                total = total + torch.logsumexp(torch.stack([zero, *diffs]), dim=0)
        per_list.append(total)
    return torch.stack(per_list).sum()


NAIVE_LIST_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "plackett_luce": naive_plackett_luce,
    "listnet": naive_listnet,
    "ranklist[approx=lse]": lambda s, y, m, n: _naive_ranklist(s, y, m, n, exact=False),
    "ranklist[approx=exact]": lambda s, y, m, n: _naive_ranklist(s, y, m, n, exact=True),
}


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a sync the clock would only see the launch, not the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    steps: dict[str, tuple[Step, Sequence[torch.Tensor]]], device: torch.device, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median and min wall time of each ``step()`` over ``repeats`` calls after ``warmup`` untimed ones.

    The steps take turns call by call rather than one after the other, so that a slow spell of the machine (another
    process, a frequency change) hits a loss and its baseline alike instead of skewing their ratio.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for it in range(warmup + repeats):
        for name, (step, leaves) in steps.items():
            # Start every call from empty .grad: accumulating into an existing one adds an op the loss doesn't do.
            for leaf in leaves:
                leaf.grad = None
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if it >= warmup:
                times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "repeats": repeats} for name, ts in times.items()
    }


def _cpu_snapshot() -> tuple[float, int, int] | None:
    """(wall time, busy ticks of the whole machine, ticks of this process), or None where /proc is missing."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    # Steal is time the hypervisor gave to other guests: as much a competitor for the CPU as another process.
    return time.perf_counter(), user + nice + system + irq + softirq + steal, int(own[11]) + int(own[12])


def other_cpu_load(
    before: tuple[float, int, int] | None, after: tuple[float, int, int] | None
) -> tuple[float | None, float | None]:
    """CPUs' worth of work done by everything but this process between two snapshots (0.5 = half a core).

    Returns (estimate, lower bound). Both counters move in whole ticks (10 ms) and disagree by a tick or two even on
    an idle machine, which over a 0.1 s row reads as 0.1-0.2 CPUs; the lower bound forgives two ticks and is what
    the warning looks at.
    """
    if before is None or after is None or after[0] <= before[0]:
        return None, None
    ticks = (after[1] - before[1]) - (after[2] - before[2])
    per_tick = 1.0 / os.sysconf("SC_CLK_TCK") / (after[0] - before[0])
    return max(0.0, ticks * per_tick), max(0.0, (ticks - 2) * per_tick)


def check_agreement(
    loss_values: Callable[[], torch.Tensor],
    naive_sum: Callable[[], torch.Tensor],
    leaves: Sequence[torch.Tensor],
    n: int,
) -> dict[str, float]:
    """Compare the naive loop with the loss on the first ``n`` rows, value and gradient; raise if they differ."""
    grads = []
    values = []
    for compute in (naive_sum, lambda: loss_values()[:n].sum()):
        for leaf in leaves:
            leaf.grad = None
        value = compute()
        value.backward()
        values.append(value.item())
        grads.append([leaf.grad[:n].clone() for leaf in leaves])
    rel_value = abs(values[0] - values[1]) / max(1.0, abs(values[1]))
    abs_grad = max((a - b).abs().max().item() for a, b in zip(grads[0], grads[1], strict=True))
    for leaf in leaves:
        leaf.grad = None
    if rel_value > AGREE_REL_VALUE or abs_grad > AGREE_ABS_GRAD:
        raise RuntimeError(
            f"naive reference disagrees with the loss (relative value error {rel_value:.2e}, max gradient error "
            f"{abs_grad:.2e}): the speed-up would be measured against a different computation"
        )
    return {"naive_rel_value_error": rel_value, "naive_max_grad_error": abs_grad}


# --------------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------------


def make_inputs(batch: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """CPU float32 inputs; drawn once so that every device times the same values."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, k, generator=gen) >= MASKED_FRACTION
    # Two always-valid slots per list at random positions: every list keeps >= 2 valid entries (a list with fewer
    # has loss 0 and would make the listwise losses look cheaper than they are).
    keep = torch.rand(batch, k, generator=gen).argsort(dim=-1)[:, :2]
    mask.scatter_(1, keep, True)
    return {
        "score_w": torch.randn(batch, generator=gen),
        "score_l": torch.randn(batch, generator=gen),
        "scores": torch.randn(batch, k, generator=gen),
        # Continuous targets: no ties, so the order is unambiguous for Plackett-Luce.
        "targets": torch.randn(batch, k, generator=gen),
        "mask": mask,
    }


def listwise_cases() -> list[tuple[str, Callable[..., torch.Tensor], dict[str, Any], str]]:
    """(row name, loss, extra kwargs, naive reference) for every listwise row.

    Each registered loss is called with its own defaults, like a trainer picking it by name; ranklist's other
    ``approx`` variant(s) are extra rows named ``ranklist[approx=...]``. The default is read from the signature, not
    assumed, so that the registry row is always checked against the matching naive form.
    """
    cases = []
    for name, fn in LISTWISE_LOSSES.items():
        if name != "ranklist":
            cases.append((name, fn, {}, name))
            continue
        default = inspect.signature(fn).parameters["approx"].default
        cases.append((name, fn, {}, f"ranklist[approx={default}]"))
        for approx in get_args(RankListApprox):
            if approx != default:
                variant = f"ranklist[approx={approx}]"
                cases.append((variant, fn, {"approx": approx}, variant))
    return cases


def evaluates_every_pair(fn: Callable[..., torch.Tensor], kwargs: dict[str, Any]) -> bool:
    """Whether a listwise row's loss compares every pair of a list: ranklist (the registry row and its other ``approx``
    rows alike) with ``skip=None``, its default, read from the signature."""
    if fn is not LISTWISE_LOSSES.get("ranklist"):
        return False
    return kwargs.get("skip", inspect.signature(fn).parameters["skip"].default) is None


def bench_device(device: torch.device, inputs: dict[str, torch.Tensor], repeats: int) -> list[dict[str, Any]]:
    """All rows for one device: every loss with its naive loop and its logsigmoid baseline."""
    batch, _ = inputs["scores"].shape

    def leaf(name: str) -> torch.Tensor:
        # detach() first: a fresh leaf per device. Without it the CPU pass would flag the shared input itself as
        # requiring grad, and the CUDA copy of it would then be a non-leaf whose .grad stays None.
        return inputs[name].detach().to(device).requires_grad_()

    s_w, s_l, scores = leaf("score_w"), leaf("score_l"), leaf("scores")
    targets = inputs["targets"].to(device)
    mask = inputs["mask"].to(device)
    # The pairwise baseline's input is a leaf of its own so that only logsigmoid (and the sum) is timed, not the
    # subtraction that produced it.
    delta = (s_w - s_l).detach().requires_grad_()
    # Context baseline for the losses that compare every pair: s_j - s_i for every i < j of a list, [B, K(K-1)/2],
    # again a leaf of its own.
    upper_i, upper_j = torch.triu_indices(scores.shape[1], scores.shape[1], offset=1, device=device)
    pair_diffs = (scores[:, upper_j] - scores[:, upper_i]).detach().requires_grad_()

    def pair_logsigmoid_step() -> None:
        F.logsigmoid(pair_diffs).sum().backward()

    def sort_step() -> None:
        torch.sort(targets, dim=-1, descending=True)

    # (row name, label, kind, loss values, naive summed loss, leaves, baseline input, naive subset size, kwargs,
    #  context steps: informational timings keyed by name, timed in turn with the loss)
    cases = []
    n_pairs = min(NAIVE_PAIRS, batch)
    for name, fn in PAIRWISE_LOSSES.items():
        if name not in NAIVE_PAIR_TERMS:
            raise KeyError(f"no naive reference for the pairwise loss {name!r}: add one to NAIVE_PAIR_TERMS")
        kwargs = {"beta": BETA, **EXTRA_PAIR_KWARGS.get(name, {})}

        def loss_values(fn: Callable[..., torch.Tensor] = fn, kwargs: dict = kwargs) -> torch.Tensor:
            return fn(s_w, s_l, **kwargs)

        def naive_sum(name: str = name) -> torch.Tensor:
            return naive_pairwise(name, s_w, s_l, n_pairs)

        cases.append((name, name, "pairwise", loss_values, naive_sum, [s_w, s_l], delta, n_pairs, kwargs, {}))

    n_lists = min(NAIVE_LISTS, batch)
    for name, fn, extra, naive_key in listwise_cases():
        if naive_key not in NAIVE_LIST_LOSSES:
            raise KeyError(f"no naive reference for the listwise loss {naive_key!r}: add one to NAIVE_LIST_LOSSES")
        kwargs = {"beta": BETA, **extra}

        def loss_values(fn: Callable[..., torch.Tensor] = fn, kwargs: dict = kwargs) -> torch.Tensor:
            return fn(scores, targets, mask, **kwargs)

        def naive_sum(naive_key: str = naive_key) -> torch.Tensor:
            return NAIVE_LIST_LOSSES[naive_key](scores, targets, mask, n_lists)

        # The registry row runs ranklist's default form; the label says which, since that default may change.
        label = name if naive_key == name else f"{name} (default {naive_key.removeprefix(name)[1:-1]})"
        context: dict[str, tuple[Step, Sequence[torch.Tensor]]] = {}
        if evaluates_every_pair(fn, kwargs):
            context["pair_logsigmoid"] = (pair_logsigmoid_step, [pair_diffs])
        if fn is LISTWISE_LOSSES.get("plackett_luce"):
            context["sort"] = (sort_step, [])
        cases.append((name, label, "listwise", loss_values, naive_sum, [scores], scores, n_lists, kwargs, context))

    rows = []
    for name, label, kind, loss_values, naive_sum, leaves, base, naive_n, kwargs, context in cases:
        before = _cpu_snapshot()
        agreement = check_agreement(loss_values, naive_sum, leaves, naive_n)
        timed = time_steps(
            {
                "loss": (lambda f=loss_values: f().sum().backward(), leaves),
                "logsigmoid": (lambda x=base: F.logsigmoid(x).sum().backward(), [base]),
                **context,
            },
            device,
            WARMUP,
            repeats,
        )
        naive = time_steps(
            {"naive": (lambda f=naive_sum: f().backward(), leaves)},
            device,
            NAIVE_WARMUP,
            min(repeats, NAIVE_MAX_REPEATS),
        )["naive"]
        load, load_min = other_cpu_load(before, _cpu_snapshot())
        loss_t, logsig_t = timed["loss"], timed["logsigmoid"]
        naive_scaled = naive["median_s"] * batch / naive_n
        speedup = naive_scaled / loss_t["median_s"]
        ratio = loss_t["median_s"] / logsig_t["median_s"]
        pair_t, sort_t = timed.get("pair_logsigmoid"), timed.get("sort")
        rows.append(
            {
                "loss": name,
                "label": label,
                "kind": kind,
                "device": str(device),
                "kwargs": kwargs,
                "loss_time_s": loss_t["median_s"],
                "loss_min_s": loss_t["min_s"],
                "naive_time_s": naive_scaled,
                "naive_measured_time_s": naive["median_s"],
                "naive_measured_on": (
                    f"first {naive_n} of {batch} {'pairs' if kind == 'pairwise' else 'lists'}, "
                    f"time scaled linearly by {batch / naive_n:g}"
                ),
                "naive_n": naive_n,
                "naive_repeats": naive["repeats"],
                "logsigmoid_time_s": logsig_t["median_s"],
                "logsigmoid_min_s": logsig_t["min_s"],
                "speedup_vs_naive": speedup,
                "ratio_vs_logsigmoid": ratio,
                "pass_speedup_vs_naive": speedup >= TARGET_SPEEDUP_VS_NAIVE,
                "pass_ratio_vs_logsigmoid": ratio <= TARGET_RATIO_VS_LOGSIGMOID,
                "pass": speedup >= TARGET_SPEEDUP_VS_NAIVE and ratio <= TARGET_RATIO_VS_LOGSIGMOID,
                # Context only, not part of the verdict (None where the row has no such baseline).
                "pair_logsigmoid_time_s": pair_t["median_s"] if pair_t else None,
                "pair_logsigmoid_min_s": pair_t["min_s"] if pair_t else None,
                "ratio_vs_pair_logsigmoid": loss_t["median_s"] / pair_t["median_s"] if pair_t else None,
                "sort_time_s": sort_t["median_s"] if sort_t else None,
                "sort_min_s": sort_t["min_s"] if sort_t else None,
                "sort_ratio_vs_logsigmoid": sort_t["median_s"] / logsig_t["median_s"] if sort_t else None,
                "other_cpu_load": load,
                "other_cpu_load_min": load_min,
                **agreement,
            }
        )
    return rows


def _cpu_name() -> str:
    # platform.processor() is often empty on Linux; /proc/cpuinfo has the model name there.
    name = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return name or platform.machine()


def _loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def loss_source_digests() -> dict[str, str]:
    """SHA-256 prefix of each file of mmpref.losses."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for path in sorted(Path(mmpref.losses.__file__).parent.glob("*.py"))
    }


def machine_info(
    devices: Sequence[torch.device], loadavg_before: list[float] | None, loss_sources: dict[str, str]
) -> dict[str, Any]:
    """Where the numbers come from: enough to tell two runs' machines apart, and whether the CPU was shared."""
    device_names = {}
    for device in devices:
        device_names[str(device)] = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(affinity) if affinity is not None else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "devices": device_names,
        "loss_sources_sha256": loss_sources,
        # Other processes on the CPU distort small-tensor timings badly (an OpenMP thread descheduled mid-op stalls the
        # op for a scheduler tick), so the 1/5/15-minute load averages before and after the run are kept as a witness.
        "loadavg_before": loadavg_before,
        "loadavg_after": _loadavg(),
    }


def _fmt_load(load: list[float] | None) -> str:
    return "n/a" if load is None else f"{load[0]:.2f}"


def _context_cell(row: dict[str, Any]) -> str:
    """The informational column: loss vs the pair logsigmoid, or a sort alone vs the [B, K] logsigmoid; else blank."""
    parts = []
    if row.get("ratio_vs_pair_logsigmoid") is not None:
        parts.append(f"pairs: {row['ratio_vs_pair_logsigmoid']:.2f}x ({1e6 * row['pair_logsigmoid_time_s']:.1f} µs)")
    if row.get("sort_ratio_vs_logsigmoid") is not None:
        parts.append(f"sort alone: {row['sort_ratio_vs_logsigmoid']:.2f}x ({1e6 * row['sort_time_s']:.1f} µs)")
    return "; ".join(parts)


def to_markdown(result: dict[str, Any]) -> str:
    """The result as a markdown report: machine, setup, then one table row per loss and device."""
    m, c = result["machine"], result["config"]
    devices = ", ".join(f"{d}: {name}" for d, name in m["devices"].items())
    lines = [
        "# Preference-loss benchmark: forward + backward",
        "",
        f"- Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs ({m['cpus_available']} available), "
        f"torch {m['torch']} with {m['torch_num_threads']} threads, Python {m['python']}; devices: {devices}; "
        f"run {m['date']}; load average (1 min) {_fmt_load(m['loadavg_before'])} before, "
        f"{_fmt_load(m['loadavg_after'])} after.",
        f"- Setup: B = {c['batch']} pairs / lists, K = {c['k']} items per list, float32, "
        f"{100 * c['masked_fraction']:.1f}% of list entries masked (>= 2 valid per list), beta = {BETA}, "
        f"margin = {MARGIN}, robust eps = {ROBUST_EPS}. Time = median of {c['repeats']} calls of "
        f"`loss(...).sum().backward()` after {WARMUP} warm-up calls.",
        f"- Naive = Python loop with scalar torch ops, timed on the first {c['naive_pairs']} pairs / "
        f"{c['naive_lists']} lists (median of {c['naive_repeats']}) and scaled linearly to B; checked to match the "
        "loss in value and gradient on that subset.",
        "- logsigmoid = bare `F.logsigmoid(x).sum().backward()` with x = s_w - s_l [B] (pairwise rows) or the "
        "[B, K] scores (listwise rows), timed call by call in turn with each loss.",
        "- Loss sources (sha256 prefix): "
        + ", ".join(f"{name} {digest}" for name, digest in m["loss_sources_sha256"].items())
        + ".",
        f"- Targets: speedup vs naive >= {TARGET_SPEEDUP_VS_NAIVE:g}x, ratio vs logsigmoid <= "
        f"{TARGET_RATIO_VS_LOGSIGMOID:g}x.",
        "- Context column (informational only, not a criterion: the pass/fail verdict uses only the two targets "
        "above), timed call by call in turn with each loss and its logsigmoid baseline:",
        '  - "pairs" (ranklist rows, which compare every pair of a list): loss time / time of a bare '
        "`F.logsigmoid(d).sum().backward()` with d a [B, K(K-1)/2] leaf of the pairwise differences s_j - s_i "
        "(i < j), the tensor such a loss must at least touch once; that baseline's time in parentheses.",
        '  - "sort alone" (plackett_luce): time of `torch.sort(targets, dim=-1, descending=True)` on the [B, K] '
        "targets / the row's logsigmoid time, i.e. the share of the logsigmoid budget a sort alone takes; the sort's "
        "time in parentheses.",
        "",
        "| device | loss | kind | loss (µs) | naive, scaled to B (ms) | naive measured on | logsigmoid (µs) "
        f"| speedup vs naive (>= {TARGET_SPEEDUP_VS_NAIVE:g}x) "
        f"| ratio vs logsigmoid (<= {TARGET_RATIO_VS_LOGSIGMOID:g}x) | pass | context (not a criterion) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        unit = "pairs" if r["kind"] == "pairwise" else "lists"
        verdict = "pass" if r["pass"] else "FAIL"
        lines.append(
            f"| {r['device']} | {r['label']} | {r['kind']} | {1e6 * r['loss_time_s']:.1f} "
            f"| {1e3 * r['naive_time_s']:.1f} | {r['naive_n']} {unit} | {1e6 * r['logsigmoid_time_s']:.1f} "
            f"| {r['speedup_vs_naive']:.0f}x {'ok' if r['pass_speedup_vs_naive'] else 'MISS'} "
            f"| {r['ratio_vs_logsigmoid']:.2f}x {'ok' if r['pass_ratio_vs_logsigmoid'] else 'MISS'} | {verdict} "
            f"| {_context_cell(r)} |"
        )
    misses = []
    for r in result["rows"]:
        if not r["pass_speedup_vs_naive"]:
            misses.append(
                f"{r['loss']} ({r['device']}): speedup vs naive {r['speedup_vs_naive']:.1f}x < "
                f"{TARGET_SPEEDUP_VS_NAIVE:g}x"
            )
        if not r["pass_ratio_vs_logsigmoid"]:
            misses.append(
                f"{r['loss']} ({r['device']}): ratio vs logsigmoid {r['ratio_vs_logsigmoid']:.2f}x > "
                f"{TARGET_RATIO_VS_LOGSIGMOID:g}x"
            )
    lines.append("")
    lines += ["Targets missed:", *(f"- {miss}" for miss in misses)] if misses else ["Every row meets both targets."]
    lines.append("")
    if result["timings_trustworthy"] is None:
        lines.append("Other processes' CPU use during the run: unknown (no /proc/stat here).")
    else:
        lines.append(
            f"Other processes' CPU use during the run (from /proc/stat): {result['other_cpu_load_run']:.3f} CPUs "
            f"on average, at least {result['other_cpu_load_min_max_row']:.3f} CPUs during the busiest row."
        )
        if not result["timings_trustworthy"]:
            where = ", ".join(result["rows_disturbed"]) or "the run as a whole"
            lines.append(
                f"WARNING: above {OTHER_LOAD_WARN:g} CPUs ({where}): the machine was shared and these timings are not "
                "trustworthy; rerun on an idle machine."
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096, help="pairs / lists per call (B)")
    parser.add_argument("--k", type=int, default=16, help="items per list (K), at least 2")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median reported)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "all"), default="all", help="all = CPU, plus CUDA when available"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_losses"), help="where the JSON/md go")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1")
    if args.k < 2:
        parser.error("--k must be >= 2: a list needs two valid entries to have a loss")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``bench_losses.json`` and ``bench_losses.md``, print the table, return the result."""
    args = parse_args(argv)
    loadavg_before = _loadavg()
    # The losses are being optimised: the digests tie these numbers to one version of them. Taken before the run,
    # next to the import, so that they describe the code that ran even if the files are edited meanwhile.
    loss_sources = loss_source_digests()
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))

    inputs = make_inputs(args.batch, args.k)
    rows = []
    run_start = _cpu_snapshot()
    for device in devices:
        rows += bench_device(device, inputs, args.repeats)
    # Over the whole run the tick rounding no longer matters; per row it catches a neighbour that came and went.
    run_load, _ = other_cpu_load(run_start, _cpu_snapshot())
    row_loads = [r["other_cpu_load_min"] for r in rows if r["other_cpu_load_min"] is not None]
    disturbed = sorted({r["loss"] for r in rows if (r["other_cpu_load_min"] or 0.0) > OTHER_LOAD_WARN})
    result = {
        "machine": machine_info(devices, loadavg_before, loss_sources),
        "config": {
            "batch": args.batch,
            "k": args.k,
            "repeats": args.repeats,
            "warmup": WARMUP,
            "naive_pairs": min(NAIVE_PAIRS, args.batch),
            "naive_lists": min(NAIVE_LISTS, args.batch),
            "naive_repeats": min(args.repeats, NAIVE_MAX_REPEATS),
            "naive_warmup": NAIVE_WARMUP,
            "masked_fraction": 1.0 - inputs["mask"].float().mean().item(),
            "dtype": "float32",
            "beta": BETA,
            "margin": MARGIN,
            "robust_eps": ROBUST_EPS,
        },
        "targets": {
            "speedup_vs_naive_min": TARGET_SPEEDUP_VS_NAIVE,
            "ratio_vs_logsigmoid_max": TARGET_RATIO_VS_LOGSIGMOID,
        },
        "rows": rows,
        "all_pass": all(r["pass"] for r in rows),
        "other_cpu_load_run": run_load,
        "other_cpu_load_min_max_row": max(row_loads) if row_loads else None,
        "rows_disturbed": disturbed,
        "timings_trustworthy": None if run_load is None else run_load <= OTHER_LOAD_WARN and not disturbed,
    }
    markdown = to_markdown(result)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_losses.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "bench_losses.md").write_text(markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
