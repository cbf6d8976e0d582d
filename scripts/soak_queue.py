#!/usr/bin/env python3
"""Soak test for shmlink.Queue crash safety: the suite's kill test, for longer.

Producers and consumers are SIGKILLed at random moments while one producer
and one consumer survive; every round checks that survivors kept going, that
no received message was torn, that every message whose ``send`` returned was
received exactly once, that nothing unsent arrived, and that a lock held by a
killed process was taken over quickly.  Rounds repeat (each with a fresh
queue and a new seed) until the kill count or the duration is reached.

Examples::

    python scripts/soak_queue.py                          # 2000 kills
    python scripts/soak_queue.py --kills 20000 --minutes 60
    python scripts/soak_queue.py --duration 600 --capacity 512 --in-flight 6

Exit status: 0 if every round passed, 1 on the first failure (its seed is
printed so the round can be replayed with ``--seed S --rounds 1``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from shmlink.segment import PREFIX, shm_dir  # noqa: E402

from workers import queue as qworkers  # noqa: E402


def _cleanup(prefix: str) -> None:
    for entry in os.listdir(shm_dir()):
        if entry.startswith(PREFIX) and prefix in entry:
            try:
                os.unlink(os.path.join(shm_dir(), entry))
            except FileNotFoundError:
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=2000, help="total kills to reach (default 2000)")
    ap.add_argument("--duration", type=float, default=None,
                    help="stop after this many seconds (whichever comes first)")
    ap.add_argument("--minutes", type=float, default=None, help="same as --duration, in minutes")
    ap.add_argument("--rounds", type=int, default=None, help="stop after this many rounds")
    ap.add_argument("--per-round", type=int, default=100,
                    help="kills per round (one queue per round; default 100)")
    ap.add_argument("--producer-share", type=float, default=0.5,
                    help="fraction of kills that hit producers (default 0.5)")
    ap.add_argument("--capacity", type=int, default=2048, help="queue capacity in bytes")
    ap.add_argument("--max-body", type=int, default=40, help="largest message body")
    ap.add_argument("--in-flight", type=int, default=3, help="victims alive at once")
    ap.add_argument("--max-delay", type=float, default=0.015,
                    help="longest wait before a kill, seconds")
    ap.add_argument("--lock-aim", type=float, default=0.5,
                    help="fraction of kills that first try to catch the victim holding the "
                         "queue's lock (SIGSTOP at random moments; default 0.5)")
    ap.add_argument("--takeover-bound", type=float, default=2.0,
                    help="longest a dead holder's lock may stay held, seconds")
    ap.add_argument("--drain-bound", type=float, default=5.0,
                    help="longest the final drain of a round may take, seconds")
    ap.add_argument("--seed", type=int, default=None, help="seed of the first round")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress inside rounds")
    args = ap.parse_args(argv)
    duration = args.duration if args.duration is not None else (
        args.minutes * 60 if args.minutes is not None else None)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)

    ctx = multiprocessing.get_context("spawn")
    h = qworkers.default_harness(ctx, log=print if args.verbose else (lambda s: None))
    prefix = f"soak-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    totals = dict(rounds=0, kills=0, lock_held=0, aimed=0, messages=0, unlogged=0)
    worst_takeover = worst_drain = 0.0
    print(f"soak_queue: first seed {seed}, up to {args.kills} kills"
          + (f" or {duration:.0f} s" if duration else ""), flush=True)
    try:
        while totals["kills"] < args.kills:
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            if args.rounds is not None and totals["rounds"] >= args.rounds:
                break
            n = min(args.per_round, args.kills - totals["kills"])
            rng = random.Random(seed)
            p = sum(rng.random() < args.producer_share for _ in range(n))
            base = f"{prefix}-{totals['rounds']}"
            try:
                r = qworkers.run_kill_test(
                    h, base + "-q", base + "-ctl", base + "-log",
                    producer_kills=p, consumer_kills=n - p, seed=seed,
                    capacity=args.capacity, max_body=args.max_body, in_flight=args.in_flight,
                    max_delay=args.max_delay, drain_bound=args.drain_bound,
                    takeover_bound=args.takeover_bound, lock_aim=args.lock_aim)
            except BaseException:
                traceback.print_exc()
                print(f"FAILED in round {totals['rounds']} (seed {seed}, {p} producer and "
                      f"{n - p} consumer kills); replay: --seed {seed} --rounds 1 "
                      f"--per-round {n} --producer-share {args.producer_share}", flush=True)
                return 1
            finally:
                _cleanup(base)
            totals["rounds"] += 1
            totals["kills"] += r.producer_kills + r.consumer_kills
            totals["lock_held"] += r.lock_held_kills
            totals["aimed"] += r.aimed
            totals["messages"] += r.messages
            totals["unlogged"] += r.maybe_lost_unlogged
            worst_takeover = max(worst_takeover, r.max_takeover_s)
            worst_drain = max(worst_drain, r.drain_s)
            print(f"round {totals['rounds']:4d} seed {seed}: {r.producer_kills:3d} producers + "
                  f"{r.consumer_kills:3d} consumers killed ({r.lock_held_kills} holding a lock, "
                  f"{r.aimed_caught} of {r.aimed} aimed kills caught one; takeover <= "
                  f"{r.max_takeover_s * 1e3:.0f} ms), {r.messages} messages, "
                  f"drain {r.drain_s * 1e3:.0f} ms, {r.seconds:.1f} s", flush=True)
            seed += 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        _cleanup(prefix)
    print(f"soak_queue: {totals['rounds']} rounds, {totals['kills']} kills "
          f"({totals['lock_held']} while holding a lock), {totals['messages']} messages checked, "
          f"{totals['unlogged']} unknowable (consumer killed between recv and its log), "
          f"worst lock takeover {worst_takeover * 1e3:.0f} ms, worst drain "
          f"{worst_drain * 1e3:.0f} ms, {time.monotonic() - t0:.0f} s: OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
