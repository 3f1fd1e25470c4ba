#!/usr/bin/env python3
"""Atomic read-modify-write instructions a request, from a callgrind profile.

    atomics.py PROFILE BINARY REQUESTS [TOP]

PROFILE was written with `--dump-instr=yes`; BINARY is the program it profiled. Counts how
often each `lock`-prefixed instruction of BINARY (and each `xchg` with memory, locked
implicitly) was executed, divided by REQUESTS, and prints the total and the TOP functions.
"""
import collections
import re
import subprocess
import sys


def locked_addresses(binary):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary],
                         capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\t(.*)", line)
        if not m:
            continue
        ins = m.group(2)
        if ins.startswith("lock ") or (ins.startswith("xchg") and "(" in ins):
            found.add(int(m.group(1), 16))
    return found


def main():
    profile, binary, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    locked = locked_addresses(binary)
    names = {"ob": {}, "fn": {}}
    ob = fn = None
    pos = 0
    after_calls = False
    per_fn = collections.Counter()
    for line in open(profile):
        line = line.rstrip("\n")
        m = re.match(r"(c?)(ob|fn|fl|fi|fe)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind = m.group(2)
            if kind in names:
                if m.group(4):
                    names[kind][m.group(3)] = m.group(4)
                if not m.group(1):
                    if kind == "ob":
                        ob = names["ob"].get(m.group(3))
                    else:
                        fn = names["fn"].get(m.group(3))
            continue
        if line.startswith("calls="):
            after_calls = True
            continue
        if not line or not (line[0] in "+-*" or line.startswith("0x")):
            continue
        tok = line.split()
        if tok[0] == "*":
            p = pos
        elif tok[0][0] in "+-":
            p = pos + int(tok[0], 0)
        else:
            p = int(tok[0], 16)
        pos = p
        if after_calls:
            # The cost line of a call: the callee's inclusive cost, not this instruction's.
            after_calls = False
            continue
        if ob and ob.endswith("/" + binary.rsplit("/", 1)[-1]) and p in locked and len(tok) > 2:
            per_fn[fn or "?"] += int(tok[2])
    total = sum(per_fn.values())
    print(f"  atomic read-modify-write instructions per request: {total / requests:.0f}")
    for name, n in per_fn.most_common(top):
        print(f"    {n / requests:6.1f}  {name[:120]}")


if __name__ == "__main__":
    main()
