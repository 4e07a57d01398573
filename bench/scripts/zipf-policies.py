#!/usr/bin/env python3
"""Replay hangar-bench's Zipf trace (the same seeded sequence as bench/src/main.rs,
`zipf_workload`) against cache policies in one process, one request at a time: hit ratio and
byte hit ratio at an *enforced* budget of a fifth of the working set, for LRU (what nginx's
cache manager approximates) and for GreedyDual-Size-Frequency variants (Hangar's disk tier).

    bench/scripts/zipf-policies.py        # about two minutes

Sequential replay ignores concurrency and fills in flight, so its numbers sit near, not on,
what `hangar-bench --scenarios zipf` measures; it is for comparing policies with each other.
"""
import bisect
import collections
import math

MASK = (1 << 64) - 1


class Rng:
    """xorshift64*, as bench/src/main.rs."""

    def __init__(self, seed):
        self.x = seed

    def next_f64(self):
        x = self.x
        x ^= x >> 12
        x ^= (x << 25) & MASK
        x ^= x >> 27
        self.x = x
        return (((x * 0x2545F4914F6CDD1D) & MASK) >> 11) / (1 << 53)


def workload(objects=10_000, requests=60_000, largest=50 << 20):
    rng = Rng(0x9E3779B97F4A7C15)
    span = math.log(largest / 1024)
    sizes = [int(1024 * math.exp(span * rng.next_f64() ** 3)) for _ in range(objects)]
    weights = [1 / r for r in range(1, objects + 1)]
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    seq = [min(bisect.bisect_left(cdf, rng.next_f64()), objects - 1) for _ in range(requests)]
    return sizes, seq


SIZES, SEQ = workload()
SERVED = sum(SIZES[i] for i in SEQ)
WORKING_SET = sum(SIZES[i] for i in set(SEQ))
BUDGET = WORKING_SET // 5


def lru(budget):
    resident, used, misses, missed_bytes = collections.OrderedDict(), 0, 0, 0
    for i in SEQ:
        if i in resident:
            resident.move_to_end(i)
            continue
        misses += 1
        missed_bytes += SIZES[i]
        if SIZES[i] > budget:
            continue
        resident[i] = True
        used += SIZES[i]
        while used > budget:
            k, _ = resident.popitem(last=False)
            used -= SIZES[k]
    return misses, missed_bytes


def gdsf(budget, a, history, aging=True):
    """Priority L + uses / size^a; L rises to each evicted priority when `aging`. With
    `history`, an object that comes back resumes from the uses it had when evicted."""
    inflation, priority, uses, order = 0.0, {}, collections.Counter(), []
    used = misses = missed_bytes = 0
    for i in SEQ:
        if i in priority:
            uses[i] += 1
            order.remove((priority[i], i))
            priority[i] = (inflation if aging else 0) + uses[i] / SIZES[i] ** a
            bisect.insort(order, (priority[i], i))
            continue
        misses += 1
        missed_bytes += SIZES[i]
        if SIZES[i] > budget:
            continue
        uses[i] = uses[i] + 1 if history else 1
        priority[i] = (inflation if aging else 0) + uses[i] / SIZES[i] ** a
        bisect.insort(order, (priority[i], i))
        used += SIZES[i]
        while used > budget:
            p, k = order.pop(0)
            del priority[k]
            used -= SIZES[k]
            inflation = p
    return misses, missed_bytes


def row(name, result):
    misses, missed_bytes = result
    print(f"| {name} | {1 - misses / len(SEQ):.3f} | {1 - missed_bytes / SERVED:.3f} | {missed_bytes / 2**30:.1f} GiB |")


print(f"working set {WORKING_SET / 2**30:.1f} GiB, budget {BUDGET / 2**30:.2f} GiB, served {SERVED / 2**30:.1f} GiB\n")
print("| policy | hit ratio | byte hit ratio | from upstream |\n|---|---|---|---|")
row("LRU, budget", lru(BUDGET))
row("LRU, twice the budget", lru(2 * BUDGET))
for a in (0, 0.25, 0.5, 1):
    row(f"GDSF a={a}", gdsf(BUDGET, a, history=False))
    row(f"GDSF a={a}, uses remembered", gdsf(BUDGET, a, history=True))
row("GDSF a=0.25, uses remembered, no aging", gdsf(BUDGET, 0.25, history=True, aging=False))
