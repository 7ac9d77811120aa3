"""Fault campaign: rounds against real images in QEMU, unattended and resumable.

    sudo .venv/bin/python -m bench.faults --rounds 200                   # PC: go on until 200 rounds
    sudo .venv/bin/python -m bench.faults --arch arm64 --rounds 30       # arm64 image on QEMU virt
    sudo .venv/bin/python -m bench.faults --rounds 20 --ops commit-ram,reset --faults cut,torn
    sudo .venv/bin/python -m bench.faults --seed 123 --ops reset --faults torn   # replay one round
    sudo .venv/bin/python -m bench.faults --rounds 200 --worker 1/2 & \
    sudo .venv/bin/python -m bench.faults --rounds 200 --worker 2/2      # one VM per core, one workdir

Every round is recorded in the state file (default bench/faults-state.json) as soon as it ends, and
bench/RESULTS.md's fault section is rewritten from it: stopping (Ctrl-C, a crash) loses at most the
round under way, and the same command goes on. The next round is the (operation, fault) pair that
applies to this image with the fewest rounds so far on either image; its seed (from the campaign
seed, the image, the pair and its number among that pair's rounds) decides everything random in it:
the files' content, the moment of the fault, the torn sector. A pair another process is running
(any image) counts one round more, so processes side by side spread over the pairs. Images and
goldens are built once into --workdir (about 4 GB for the PC with every operation).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.httpserve import serve

from . import record, rounds, world
from .ops import OPS

ROOT = Path(__file__).resolve().parents[2]


def pairs_for(arch: str, ops: list[str], faults: list[str]) -> list[tuple[str, str]]:
    """The applicable pairs, in diagonals: consecutive rounds vary both the operation and the fault, so
    that a short run already covers every operation and every fault."""
    pairs = [(o, f) for o in ops for f in faults if rounds.applies(OPS[o], f, arch)]
    return sorted(pairs, key=lambda p: ((ops.index(p[0]) - faults.index(p[1])) % len(faults), ops.index(p[0])))


def next_pair(state: dict[str, Any], arch: str, pairs: list[tuple[str, str]],
              busy: Iterable[tuple[str, str]] = ()) -> tuple[str, str]:
    """The pair of ``arch`` with the fewest rounds on both images (the goal counts them together);
    a round under way in another process (``busy``) counts as one already."""
    done = Counter((r["op"], r["fault"]) for r in state["rounds"] if not r.get("replay"))
    done.update(busy)
    return min(pairs, key=lambda p: (done[p], pairs.index(p)))


def round_seed(state: dict[str, Any], arch: str, op: str, fault: str, taken: Iterable[int] = ()) -> int:
    """The next round of this pair on this image: its number among them makes it new; a seed already
    drawn, or ``taken`` by a round under way in another process, is passed over."""
    used = {r["seed"] for r in state["rounds"]} | set(taken)
    n = sum(1 for r in state["rounds"] if (r["arch"], r["op"], r["fault"]) == (arch, op, fault))
    while True:
        seed = random.Random(f"{state['campaign_seed']}:{arch}:{op}:{fault}:{n}").randrange(2**32)
        if seed not in used:
            return seed
        n += 1


def choose_partner(op: str, fault: str, seed: int, arch: str, given: str | None) -> str | None:
    if fault != "two-ops":
        return None
    options = rounds.partners(OPS[op], arch)
    if given:
        if given not in options:
            raise SystemExit(f"--partner {given}: {op} runs alongside only {', '.join(options)}")
        return given
    return random.Random(f"partner:{seed}").choice(options)


def parse_list(text: str | None, known: list[str], what: str) -> list[str]:
    if not text:
        return known
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items:
        if x not in known:
            raise SystemExit(f"--{what} {x}: not one of {', '.join(known)}")
    return items


def worker_of(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N with 1 <= K <= N, e.g. 1/2")
    return int(k) - 1, int(n)


@contextlib.contextmanager
def owning(rounddir: Path) -> Iterator[None]:
    """One process per round directory: a second one would copy its disk over the first's running VM."""
    rounddir.mkdir(parents=True, exist_ok=True)
    fd = os.open(rounddir / ".owner.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"{rounddir}: another campaign process runs its rounds here; give each process "
                             "its own --worker K/N (same --workdir) or its own --workdir") from None
        yield
    finally:
        os.close(fd)  # closing drops the flock


def campaign(args: argparse.Namespace) -> int:
    ops = parse_list(args.ops, [o for o in OPS if args.arch in OPS[o].arches], "ops")
    faults = parse_list(args.faults, list(rounds.FAULTS), "faults")
    with record.locked(args.state):  # workers started together share one campaign seed
        state = record.load(args.state)
        record.save(args.state, state)
    worker, workers = args.worker
    pairs = pairs_for(args.arch, ops, faults)
    if not pairs:
        raise SystemExit("no (operation, fault) pair applies: see --ops and --faults")
    replay = args.seed is not None
    if replay and (len(ops) != 1 or len(faults) != 1):
        known = [r for r in state["rounds"] if r["seed"] == args.seed and r["arch"] == args.arch]
        if not known:
            raise SystemExit(f"--seed {args.seed}: not in {args.state}; give one --ops and one --faults")
        if any(not record.same_round(r, known[0]) for r in known):
            raise SystemExit(f"--seed {args.seed}: rounds of different pairs drew it ("
                             + ", ".join(sorted({f"{r['op']}/{r['fault']}" for r in known}))
                             + "): give one --ops and one --faults (and --partner for two-ops)")
        ops, faults, args.partner = [known[0]["op"]], [known[0]["fault"]], known[0].get("partner")
        pairs = [(ops[0], faults[0])]
    kinds = {k for o in ops for k in OPS[o].kinds[:1]}
    if "two-ops" in faults:
        kinds |= {OPS[p].kinds[0] for o in ops for p in rounds.partners(OPS[o], args.arch)}
    kinds &= set(world.kinds_for(args.arch))
    uses = set(ops) | ({p for o in ops for p in rounds.partners(OPS[o], args.arch)} if "two-ops" in faults else set())
    commit = record.commit_id()  # the code this run imported, whatever is committed while it runs
    rounddir = args.workdir / (f"worker{worker}" if workers > 1 else "")
    failed = 0
    # The round directory is taken before the world is built: a second process learns it at once.
    with owning(rounddir), contextlib.ExitStack() as stack:
        w = world.make(args.arch, args.workdir, kinds, "apt-upgrade" in uses, "update-apply" in uses,
                       need_kernel="apt-kernel" in uses)
        logdir = args.workdir / "logs"
        logdir.mkdir(exist_ok=True)
        if w.repo:
            w.repo_port = stack.enter_context(serve(w.repo)).port
        if w.channel:
            w.channel_port = stack.enter_context(serve(w.channel)).port
        while True:
            with record.locked(args.state):
                state = record.load(args.state)  # other workers' rounds too
                mine = [r for r in state["rounds"] if r["arch"] == args.arch and not r.get("replay")]
                if replay:
                    seed, (op, fault) = args.seed, pairs[0]
                elif len(mine) >= args.rounds:
                    break
                else:
                    others = list(record.running(args.state).values())
                    op, fault = next_pair(state, args.arch, pairs, [(o, f) for o, f, _ in others])
                    seed = round_seed(state, args.arch, op, fault, [s for _, _, s in others])
                    record.set_running(args.state, (op, fault, seed))
            spec = rounds.Spec(seed, op, fault, choose_partner(op, fault, seed, args.arch, args.partner))
            print(f"round {len(mine) + 1}/{args.rounds}: seed {seed}, {op}"
                  + (f" + {spec.partner}" if spec.partner else "") + f", {fault}", flush=True)
            rec = rounds.run(w, spec, state["durations"], rounddir, logdir)
            rec["commit"] = commit
            rec["image_commit"] = w.image_commit
            rec["replay"] = replay
            measured = {}
            if rec.get("op_rc") == 0 and not spec.partner and fault not in ("full", "inodes") \
                    and not OPS[op].reboots:
                measured[op] = rec["op_seconds"]
            record.add(args.state, rec, measured, args.results, list(OPS), list(rounds.FAULTS), rounds.applicable)
            print(f"  {rec['outcome']} in {rec['seconds']} s" + (": " + "; ".join(rec["problems"])
                                                                 if rec["problems"] else ""), flush=True)
            if rec["outcome"] == "failed":
                failed += 1
                if args.keep_failed:
                    shutil.copy(rounddir / "round.img", logdir / f"{args.arch}-{seed}.img")
            if replay:
                break
    (rounddir / "round.img").unlink(missing_ok=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("pc", "arm64"), default="pc")
    parser.add_argument("--rounds", type=int, default=10, help="the campaign's total for this arch: go on until it")
    parser.add_argument("--ops", help=f"comma-separated, of: {', '.join(OPS)}")
    parser.add_argument("--faults", help=f"comma-separated, of: {', '.join(rounds.FAULTS)}")
    parser.add_argument("--seed", type=int, help="replay the round with this seed (not counted in the campaign)")
    parser.add_argument("--partner", help="two-ops replay: the operation alongside")
    parser.add_argument("--state", type=Path, default=ROOT / "bench" / "faults-state.json")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md",
                        help="the Markdown file whose fault section is rewritten ('' for none)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/liveng-faults"))
    parser.add_argument("--keep-failed", action="store_true", help="keep the disk of each failed round in the logs")
    parser.add_argument("--worker", type=worker_of, default=(0, 1), metavar="K/N",
                        help="one of N campaign processes side by side (K from 1) in one --workdir: each "
                             "has its own round disk there; all share --state and the images")
    args = parser.parse_args(argv)
    if args.results == Path(""):
        args.results = None
    return campaign(args)


if __name__ == "__main__":
    sys.exit(main())
