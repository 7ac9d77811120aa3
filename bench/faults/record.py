"""The campaign's record: a JSON state file (every round, so that a rerun goes on where it stopped
and any round can be replayed from its seed) and the section of bench/RESULTS.md it owns."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench/faults.py: this section is written by the tool; edits are overwritten -->"
END = "<!-- end of bench/faults.py's section -->"
GOAL_PER_PAIR = 10  # rounds for every (operation, fault) pair that applies (issue 14's "Done when")
# Whether an (operation, fault) pair applies on an architecture (rounds.applicable).
Applies = Callable[[str, str, str], bool]


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        return state
    return {"campaign_seed": time.time_ns() % 2**32, "rounds": [], "durations": {}}


def save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """The state file to oneself: campaign workers (--worker K/N) add their rounds one at a time."""
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _claims_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.running")


def running(path: Path) -> dict[int, tuple[str, str, int]]:
    """The rounds other campaign processes are running now, (operation, fault, seed) by process id
    (processes gone, stopped or killed mid-round, left out). Call with the state locked."""
    try:
        claims = json.loads(_claims_path(path).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    alive = {}
    for pid, (op, fault, seed) in claims.items():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass  # alive, another user's
        alive[int(pid)] = (op, fault, seed)
    return alive


def set_running(path: Path, round_: tuple[str, str, int] | None) -> None:
    """This process runs ``round_`` (operation, fault, seed; None: nothing). Call with the state locked."""
    claims = {pid: list(r) for pid, r in running(path).items() if pid != os.getpid()}
    if round_:
        claims[os.getpid()] = list(round_)
    tmp = _claims_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(claims))
    tmp.replace(_claims_path(path))


def add(path: Path, rec: dict[str, Any], durations: dict[str, float], results: Path | None,
        ops: list[str], faults: list[str], applies: Applies | None = None) -> dict[str, Any]:
    """One round more in the state file as it is now (other workers' rounds included), then the
    RESULTS section rewritten from it; returns that state."""
    with locked(path):
        state = load(path)
        state["rounds"].append(rec)
        set_running(path, None)
        for op, seconds in durations.items():
            state["durations"][op] = max(state["durations"].get(op, 0.0), seconds)
        save(path, state)
        if results:
            write_results(results, section(state, ops, faults, applies))
    return state


def commit_id() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    return out.stdout.strip() or "?"


def replay_command(r: dict[str, Any]) -> str:
    return (f"python -m bench.faults --arch {r['arch']} --seed {r['seed']} --ops {r['op']} --faults {r['fault']}"
            + (f" --partner {r['partner']}" if r.get("partner") else ""))


def section(state: dict[str, Any], ops: list[str], faults: list[str], applies: Applies | None = None) -> str:
    """``applies``: which pairs apply (cells "n/a" otherwise, "0/0" for one not run yet, and a line of
    what is left to the goal of GOAL_PER_PAIR rounds each); without it "-" for every pair not run."""
    rounds = [r for r in state["rounds"] if not r.get("replay")]
    lines = [BEGIN, "## Fault campaign (bench/faults.py)", ""]
    if not rounds:
        return "\n".join([*lines, "No rounds yet.", END])
    first, last = rounds[0]["started"], rounds[-1]["started"]
    commits = sorted({r.get("commit", "?") for r in rounds})
    lines += [f"Rounds from {first} to {last} (commits {', '.join(commits)}); campaign seed "
              f"{state['campaign_seed']}. A round: a booted VM resumed (tests/boot/golden.py), one operation "
              "started, one fault, then a boot with nobody at the console and the checks (shell, p2 as built, "
              "p1's boot files' sectors as built (rounds of commit 5d573d2 on), "
              "`liveng status`/`verify`, every fsynced file intact, atomically written files whole or absent, "
              "the operation's own outcome, `e2fsck -fn` of p7 after a clean power-off). Cells: recovered/run "
              "(errors of the harness itself, not counted, in brackets).", ""]
    if applies:
        lines += [_goal(rounds, ops, faults, applies), ""]
    for arch in sorted({r["arch"] for r in rounds}):
        mine = [r for r in rounds if r["arch"] == arch]
        run = Counter((r["op"], r["fault"]) for r in mine if r["outcome"] != "error")
        ok = Counter((r["op"], r["fault"]) for r in mine if r["outcome"] == "recovered")
        err = Counter((r["op"], r["fault"]) for r in mine if r["outcome"] == "error")
        total, good = sum(run.values()), sum(ok.values())
        lines += [f"### {arch}: {total} rounds, {good} recovered, {total - good} failed, "
                  f"{sum(err.values())} harness errors", ""]
        if applies:
            lines += [f"{sum(applies(o, f, arch) for o in ops for f in faults)} (operation, fault) pairs apply "
                      f"to this image.", ""]
        lines += [_by_commit(mine), ""]
        lines += ["| operation | " + " | ".join(faults) + " |", "|---|" + "---|" * len(faults)]
        for op in ops:
            cells = []
            for fault in faults:
                key = (op, fault)
                if run[key] or err[key]:
                    cells.append(f"{ok[key]}/{run[key]}" + (f" [{err[key]}]" if err[key] else ""))
                elif applies:
                    cells.append("0/0" if applies(op, fault, arch) else "n/a")
                else:
                    cells.append("-")
            if any(c not in ("-", "n/a") for c in cells):
                lines.append(f"| {op} | " + " | ".join(cells) + " |")
        failures = [r for r in mine if r["outcome"] == "failed"]
        lines.append("")
        if failures:
            lines += ["Failures (replay: the command shown):", ""]
            for r in failures:
                why = _one_line("; ".join(p.split("; console log:")[0] for p in r["problems"]))
                replays = [x for x in state["rounds"] if x.get("replay") and same_round(x, r)]
                lines.append(f"- seed {r['seed']} ({r['op']}" + (f" + {r['partner']}" if r.get("partner") else "")
                             + f", {r['fault']}, fault {r.get('delay', '?')} s in): {why[:300]} — "
                             f"`{replay_command(r)}`"
                             + "".join(f"; replayed on {x.get('commit', '?')}: {x['outcome']}" for x in replays))
            lines.append("")
        errors = [r for r in mine if r["outcome"] == "error"]
        if errors:
            lines += ["Harness errors (the round did not reach its fault):", ""]
            lines += [f"- seed {r['seed']} ({r['op']}, {r['fault']}): {'; '.join(r['problems'])[:300]}"
                      for r in errors]
            lines.append("")
    return "\n".join([*lines, END])


def same_round(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A seed says every random choice of a round, not its pair: when the number of workers changed,
    two rounds could draw one seed (seed 87606111 on the PC: apt-upgrade/torn and db-writes-ram-paths/torn)."""
    return all(a.get(k) == b.get(k) for k in ("seed", "arch", "op", "fault", "partner"))


def ran(r: dict[str, Any]) -> str:
    """The commit whose device code a round ran: its images' (recorded since 2026-12-06), else the
    harness's, which built the images of the rounds before."""
    image = r.get("image_commit", "?")
    return str(image if image != "?" else r.get("commit", "?"))


def _by_commit(rounds: list[dict[str, Any]]) -> str:
    """Recovered/run by the code each round ran (its images'), in the order the commits were first
    used: the rounds after the last fix are the campaign run again."""
    order = dict.fromkeys(ran(r) for r in rounds)
    run = Counter(ran(r) for r in rounds if r["outcome"] != "error")
    ok = Counter(ran(r) for r in rounds if r["outcome"] == "recovered")
    cells = [f"{c} {ok[c]}/{run[c]}" for c in order]
    return "By the commit whose images the rounds ran (recovered/run): " + ", ".join(cells) + "."


def _goal(rounds: list[dict[str, Any]], ops: list[str], faults: list[str], applies: Applies) -> str:
    """The issue's goal is per pair over the whole campaign: GOAL_PER_PAIR rounds of each pair that
    applies to either image, the rounds of both images counted (arm64 runs the pairs it has)."""
    archs = sorted({r["arch"] for r in rounds} | {"pc", "arm64"})
    pairs = [(o, f) for o in ops for f in faults if any(applies(o, f, a) for a in archs)]
    run = Counter((r["op"], r["fault"]) for r in rounds if r["outcome"] != "error")
    short = {p: GOAL_PER_PAIR - run[p] for p in pairs if run[p] < GOAL_PER_PAIR}
    return (f"Goal: {GOAL_PER_PAIR} rounds of every (operation, fault) pair, both images' rounds counted. "
            f"{len(pairs)} pairs apply to one image or both; {len(pairs) - len(short)} have {GOAL_PER_PAIR} "
            f"rounds or more; {sum(short.values())} more rounds give every pair {GOAL_PER_PAIR}.")


def _one_line(text: str) -> str:
    """A problem as one line of a Markdown list: no line breaks, no terminal colour codes."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def write_results(results: Path, text: str) -> None:
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    tmp = results.with_name(f".{results.name}.tmp")
    tmp.write_text(new)
    tmp.replace(results)
