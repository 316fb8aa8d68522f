#!/usr/bin/env python3
"""The house's shape, measured from src/: function lengths, imports that run back up the
pipeline, and import circles between modules.

    python3 scripts/house.py [SRC_DIR] [--check]

With --check (scripts/test.sh) it exits 1 when an import runs up the pipeline or two modules
import each other, or a top-level module is missing from STAGES.

A module's stage is its top-level module's place in STAGES (lib.rs's order); an import runs
*up* when it reaches a later stage than its own. A circle is a set of modules that import each
other; a child reaching its own parent (`super::x`) is how Rust nests modules, not a circle.
Rough by design (regular expressions, not a parser): it counts, it does not compile.
"""
import os
import re
import statistics
import sys

# The pipeline, lowest floor first (each name a top-level module of src/).
STAGES = [
    ["error", "atomic", "digest", "rng", "json_float", "pareto", "signals", "table", "device", "host",
     "summary"],
    ["config"],
    ["corpus", "vocab", "batch"],
    ["model", "optim"],
    ["run_dir", "checkpoint", "tags", "train", "sample"],
    ["sweep"],
    ["runs", "importance", "compare", "refine", "report"],
]
STAGE = {m: i for i, ms in enumerate(STAGES) for m in ms}


def modules(src):
    """Every file → its module path (`sweep/plan/mod.rs` → `sweep::plan`)."""
    out = {}
    for root, _, files in os.walk(src):
        # src/bin/*.rs are binaries on top of the library, as main.rs is.
        if os.path.relpath(root, src).split(os.sep)[0] == "bin":
            continue
        for f in files:
            if not f.endswith(".rs") or f in ("main.rs", "lib.rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            out[os.path.join(root, f)] = "::".join(rel)
    return out


def strip_tests(text):
    """The file without comments and its `#[cfg(test)] mod tests { ... }` block (tests may
    import freely; a doc link is not an import)."""
    i = text.find("#[cfg(test)]\nmod tests")
    text = text if i < 0 else text[:i]
    return "\n".join(re.sub(r"//.*", "", line) for line in text.split("\n"))


def paths(text):
    """Every `crate::a::b` / `super::a` path, braces expanded one level."""
    found = []
    for m in re.finditer(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{([^}]*)\})?", text):
        base = [m.group(1)] + [s for s in m.group(2).split("::") if s]
        if m.group(4) is not None:
            for part in m.group(4).split(","):
                part = part.strip().split(" as ")[0]
                if part and part != "self":
                    found.append(base + part.split("::"))
                elif part == "self":
                    found.append(base)
        else:
            found.append(base)
    return found


def resolve(path, here, known):
    """The module a path lands in (the longest known prefix), or None."""
    if path[0] == "crate":
        segs = path[1:]
    else:
        segs = here.split("::")
        for s in path:
            if s == "super":
                segs = segs[:-1]
            else:
                segs = segs + [s]
        # `super::x` in a file module `a::b` means `a::x`
    best = None
    for n in range(1, len(segs) + 1):
        cand = "::".join(segs[:n])
        if cand in known:
            best = cand
    return best


def functions(text):
    """Lengths of every fn body (signature line to closing brace)."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        if re.match(r"\s*(pub(\([a-z]+\))? )?(const )?(unsafe )?fn [a-z_0-9]+", lines[i]):
            depth, started, j = 0, False, i
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                started = started or "{" in lines[j]
                if (started and depth <= 0) or (not started and lines[j].rstrip().endswith(";")):
                    break
                j += 1
            if started:
                out.append((j - i + 1, lines[i].strip()))
            i += 1
        else:
            i += 1
    return out


def circles(edges, nodes):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if a != "--check"]
    src = args[0] if args else "src"
    mods = modules(src)
    known = set(mods.values())
    edges, up, fns = {}, [], []
    for file, mod in sorted(mods.items()):
        text = strip_tests(open(file, encoding="utf-8").read())
        fns += [(n, f"{mod}: {sig}") for n, sig in functions(text)]
        for p in paths(text):
            target = resolve(p, mod, known)
            if not target or target == mod:
                continue
            # a child reaching an ancestor's items is nesting, not an import across
            if mod.startswith(target + "::"):
                continue
            edges.setdefault(mod, set()).add(target)
            a, b = STAGE.get(mod.split("::")[0]), STAGE.get(target.split("::")[0])
            if a is not None and b is not None and b > a:
                up.append(f"{mod} -> {target}")
    unstaged = sorted({m.split("::")[0] for m in known} - set(STAGE))
    lengths = sorted(n for n, _ in fns)
    longest = sorted(fns, reverse=True)[:5]
    print(f"modules: {len(known)} files")
    print(f"functions: {len(fns)}, median {statistics.median(lengths):.0f} lines, "
          f"over 80 lines: {sum(n > 80 for n in lengths)}")
    print("longest:")
    for n, sig in longest:
        print(f"  {n:4d}  {sig[:110]}")
    print(f"imports that run up the pipeline: {len(sorted(set(up)))}")
    for u in sorted(set(up)):
        print(f"  {u}")
    cs = circles(edges, known)
    print(f"import circles: {len(cs)}")
    for c in cs:
        print(f"  {' <-> '.join(c)}")
    if unstaged:
        print(f"modules not in STAGES: {', '.join(unstaged)}")
    if "--check" in sys.argv and (up or cs or unstaged):
        sys.exit(1)


if __name__ == "__main__":
    main()
