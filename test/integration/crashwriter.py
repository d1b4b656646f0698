#!/usr/bin/env python3
"""Crash-consistency oracle for the journal tests.

  crashwriter.py write PATH LOG --blocks N [--seconds S] [--seed X]
      Writes runs of 1..16 blocks of 4 KiB at random block numbers with
      O_DIRECT, each block stamped with (magic, block number, generation);
      generations increase across runs (continued from LOG). After each
      pwrite returns, every block of the run is appended to LOG as
      "block gen". Stops after S seconds or at the first I/O error (the
      daemon was killed) and exits 0 either way; prints what it did.

  crashwriter.py verify PATH LOG --blocks N
      Reads every block. A block named in LOG must hold a valid stamp for
      that block with a generation at least the last one LOG gives it (a
      newer, unacknowledged write may have landed; an older one may not).
      A block never named must be zeros or a valid stamp. Exits 1 listing
      the first bad blocks.
"""
import argparse
import mmap
import os
import random
import struct
import sys
import time

BS = 4096
MAGIC = b"XDCW"
UNIT = struct.Struct("<4sIQ")  # magic, block (low 32 bits), generation


def stamp(block, gen):
    return UNIT.pack(MAGIC, block & 0xFFFFFFFF, gen) * (BS // UNIT.size)


def parse(buf, block):
    """Returns the generation stamped in buf, 0 for zeros, None if invalid."""
    if buf == bytes(BS):
        return 0
    first = buf[: UNIT.size]
    if first * (BS // UNIT.size) != buf:
        return None
    magic, blk, gen = UNIT.unpack(first)
    if magic != MAGIC or blk != block & 0xFFFFFFFF or gen == 0:
        return None
    return gen


def read_log(path):
    last = {}
    top = 0
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 2:
                    continue  # a torn last line of a killed writer
                b, g = int(parts[0]), int(parts[1])
                last[b] = max(last.get(b, 0), g)
                top = max(top, g)
    return last, top


def cmd_write(args):
    _, top = read_log(args.log)
    gen = top + 1
    rng = random.Random(args.seed)
    fd = os.open(args.path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 16 * BS)
    log = open(args.log, "a")
    end = time.monotonic() + args.seconds
    writes = 0
    try:
        while time.monotonic() < end:
            n = rng.randint(1, 16)
            b = rng.randrange(0, args.blocks - n + 1)
            gens = []
            for i in range(n):
                buf[i * BS : (i + 1) * BS] = stamp(b + i, gen)
                gens.append(gen)
                gen += 1
            try:
                done = os.pwritev(fd, [memoryview(buf)[: n * BS]], b * BS)
            except OSError as e:
                print(f"write error after {writes} writes: {e}")
                return 0
            if done != n * BS:
                print(f"short write after {writes} writes")
                return 0
            log.write("".join(f"{b + i} {gens[i]}\n" for i in range(n)))
            log.flush()
            writes += 1
            if writes == 1 and args.ready:
                # The caller's kill timer starts here, not while this
                # process is still starting up and parsing its log.
                open(args.ready, "w").close()
    finally:
        log.close()
        try:
            os.close(fd)
        except OSError:
            pass  # the daemon behind the file is gone
    print(f"{writes} writes, last generation {gen - 1}")
    return 0


def cmd_verify(args):
    last, _ = read_log(args.log)
    fd = os.open(args.path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 256 * BS)
    bad = []
    checked = 0
    block = 0
    while block < args.blocks:
        n = min(256, args.blocks - block)
        got = os.preadv(fd, [memoryview(buf)[: n * BS]], block * BS)
        if got != n * BS:
            print(f"short read at block {block}: {got} bytes")
            return 1
        for i in range(n):
            b = block + i
            g = parse(bytes(buf[i * BS : (i + 1) * BS]), b)
            want = last.get(b)
            if g is None:
                bad.append(f"block {b}: not a valid stamp (expected gen >= {want})")
            elif want is not None and g < want:
                bad.append(f"block {b}: generation {g} < acknowledged {want}")
            elif want is not None:
                checked += 1
        block += n
    os.close(fd)
    if bad:
        print(f"{len(bad)} bad blocks; first ones:")
        for line in bad[:10]:
            print("  " + line)
        return 1
    print(f"ok: {checked} acknowledged blocks verified, {args.blocks} blocks read")
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["write", "verify"])
    p.add_argument("path")
    p.add_argument("log")
    p.add_argument("--blocks", type=int, required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ready", help="write: create this file after the first write completed")
    args = p.parse_args()
    return cmd_write(args) if args.cmd == "write" else cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main())
