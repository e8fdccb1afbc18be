"""perceus.native.nodeset against a small pure-Python reference, ClusterShell, and the guide.

The reference below is deliberately naive (regexes, itertools.product, sorted sets): it
spells out the semantics the compiled module implements with C loops.
"""

import itertools
import random
import re

import pytest
from ClusterShell.NodeSet import NodeSet

from perceus.native import nodeset
from perceus.native.nodeset import MAX_NAMES, NodeSetError, count, expand, fold, fold_list, is_glob

# --------------------------------------------------------------------------- reference

MAXRUN = 18
RUN = re.compile(r"[0-9]+")


def ref_parse(name):
    """name -> (pattern, pieces, runs): digit runs of <= 18 digits are the numbers."""
    pieces, runs, last = [], [], 0
    for m in RUN.finditer(name):
        if len(m.group()) <= MAXRUN:
            pieces.append(name[last : m.start()])
            runs.append(m.group())
            last = m.end()
    pieces.append(name[last:])
    return "%s".join(p.replace("%", "%%") for p in pieces), pieces, runs


def ref_key(name):
    pattern, _, runs = ref_parse(name)
    return pattern, tuple((len(r), int(r)) for r in runs)


def ref_split(expr):
    parts, depth, cur = [], 0, ""
    for c in expr:
        depth += c == "["
        depth -= c == "]"
        if c == "," and not depth:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    return parts + [cur]


def ref_term(term):
    """One comma-free part -> its names. Digits right before a bracket join both bounds."""
    chunks = re.split(r"(\[[^\]]*\])", term.strip())
    choices = []
    for chunk in chunks:
        if not chunk.startswith("["):
            choices.append([chunk])
            continue
        prefix = re.search(r"[0-9]*$", choices[-1][0]).group()
        choices[-1] = [choices[-1][0][: len(choices[-1][0]) - len(prefix)]]
        names = []
        for elem in chunk[1:-1].split(","):
            rng, _, step = elem.partition("/")
            left, _, right = rng.partition("-")
            left, right = prefix + left.strip(), prefix + (right.strip() or left.strip())
            width = len(left) if len(left) > 1 and left[0] == "0" else 0
            for v in range(int(left), int(right) + 1, int(step or 1)):
                names.append(str(v).zfill(width))
        choices.append(names)
    return ["".join(combo) for combo in itertools.product(*choices)]


def ref_expand(expr):
    return ref_sorted(n for part in ref_split(expr) for n in ref_term(part))


def ref_sorted(names):
    return sorted(set(names), key=ref_key)


def ref_runs(keys):
    """Sorted distinct (length, value) pairs -> [(width, first, last)]: a run of width w
    holds value v written s iff format(v, f"0{w}d") == s."""
    runs = []
    for length, v in sorted(set(keys)):
        s = str(v).zfill(length)
        if runs:
            w, a, b = runs[-1]
            if v == b + 1 and format(v, f"0{w}d") == s:
                runs[-1] = (w, a, v)
                continue
        runs.append((length if s[0] == "0" and length > 1 else 0, v, v))
    return runs


def ref_runs_text(runs):
    def num(v, w):
        return str(v).zfill(w)

    items = [num(a, w) if a == b else f"{num(a, w)}-{num(b, w)}" for w, a, b in runs]
    if len(runs) == 1 and runs[0][1] == runs[0][2]:
        return items[0]
    return "[" + ",".join(items) + "]"


def ref_fold(names):
    by_pattern = {}
    for name in names:
        pattern, pieces, runs = ref_parse(name)
        by_pattern.setdefault(pattern, (pieces, set()))[1].add(tuple((len(r), int(r)) for r in runs))
    out = []
    for pattern, (pieces, points) in by_pattern.items():
        k = len(pieces) - 1
        items = list(points)
        for d in reversed(range(k)):  # last dimension first
            groups = {}
            for it in items:
                groups.setdefault(it[:d] + it[d + 1 :], []).append(it[d])
            items = [rest[:d] + (tuple(ref_runs(keys)),) + rest[d:] for rest, keys in groups.items()]
        for vec in items:
            text = pieces[0] + "".join(ref_runs_text(vec[d]) + pieces[d + 1] for d in range(k))
            first = tuple(max(r[0][0], len(str(r[0][1]))) * 10**19 + r[0][1] for r in vec)
            out.append((pattern, first, text))
    return ",".join(text for _, _, text in sorted(out))


# --------------------------------------------------------------------------- random inputs


def rand_group(rng, digits_before=""):
    elems = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        a = rng.randint(0, 120)
        b = a + rng.choice([0, 1, 5, 12, 40])
        width = rng.choice([0, 0, 2, 3, 4])
        left, right = str(a).zfill(width), str(b).zfill(width)
        if digits_before and len(left) > len(right):
            right = right.zfill(len(left))
        elem = left if a == b and rng.random() < 0.5 else f"{left}-{right}"
        if a != b and rng.random() < 0.2:
            elem += f"/{rng.randint(1, 7)}"
        elems.append(elem)
    return "[" + ",".join(elems) + "]"


def rand_part(rng):
    if rng.random() < 0.15:
        return rng.choice(["login", "io5", "n007", "n7", "gpu%1", "x-1-2", "master"])
    prefix = rng.choice(["n", "node", "io", "r", "c-", "a%", ""])
    digits = rng.choice(["", "", "", "0", "00", "1"])
    part = prefix + digits + rand_group(rng, digits)
    if rng.random() < 0.35:
        part += rng.choice(["-n", "x", "s"]) + rand_group(rng)
    if rng.random() < 0.1:
        part += rng.choice(["0", "-eth", "b3"])
    return part


def rand_expr(rng):
    return ",".join(rand_part(rng) for _ in range(rng.choice([1, 1, 2, 3, 4])))


def rand_names(rng):
    names = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        prefix = rng.choice(["n", "cn", "io", "r1-n", "a%b", ""])
        if kind < 0.6:
            width = rng.choice([0, 0, 2, 3])
            start = rng.randint(0, 200)
            for v in rng.sample(range(start, start + 150), rng.randint(1, 60)):
                names.append(prefix + str(v).zfill(rng.choice([width, width, 0, 3])))
        elif kind < 0.9:
            for _ in range(rng.randint(1, 40)):
                node = str(rng.randint(0, 12)).zfill(rng.choice([1, 2]))
                names.append(f"r{rng.randint(0, 4)}-{prefix}{node}")
        else:
            names.append(rng.choice(["login", "master", "gpu", "x%y"]))
    names += rng.sample(names, len(names) // 4)  # duplicates
    rng.shuffle(names)
    return names


# --------------------------------------------------------------------------- cross-checks


@pytest.mark.parametrize("seed", range(300))
def test_expand_and_count_match_reference(seed):
    rng = random.Random(seed)
    expr = rand_expr(rng)
    want = ref_expand(expr)
    assert expand(expr) == want, expr
    assert count(expr) == len(want), expr


@pytest.mark.parametrize("seed", range(300))
def test_fold_matches_reference(seed):
    names = rand_names(random.Random(1000 + seed))
    folded = fold(names)
    assert folded == ref_fold(names)
    assert fold_list(names) == (ref_split(folded) if folded else [])
    assert expand(folded) == ref_sorted(names)


@pytest.mark.parametrize("seed", range(150))
def test_fold_of_expand_round_trips(seed):
    expr = rand_expr(random.Random(5000 + seed))
    names = expand(expr)
    shuffled = names + names[: len(names) // 3]
    random.Random(seed).shuffle(shuffled)
    assert expand(fold(shuffled)) == names
    assert count(fold(names)) == len(names)


# --------------------------------------------------------------------------- the guide


def test_guide_set_vnfs_example():
    names = expand("n00[00-05,06,20-40]")
    want = [f"n{i:04d}" for i in range(7)] + [f"n{i:04d}" for i in range(20, 41)]
    assert names == want
    assert len(names) == 28  # n0000..n0006 (7) and n0020..n0040 (21)
    assert count("n00[00-05,06,20-40]") == 28
    assert fold(names) == "n[0000-0006,0020-0040]"


def test_guide_node_list_example_skips_n0098():
    names = expand("n00[00-97,99-199]")
    assert count("n00[00-97,99-199]") == 199 == len(names)
    assert "n0098" not in names
    assert "n0097" in names and "n0099" in names and "n0199" in names
    assert names[-1] == "n0199"
    assert fold(names) == "n[0000-0097,0099-0199]"


def test_guide_delete_example():
    assert expand("n000[0-2]") == ["n0000", "n0001", "n0002"]


def test_two_dimensions():
    names = expand("r[1-2]-n[01-04]")
    assert names == [f"r{r}-n{n:02d}" for r in (1, 2) for n in range(1, 5)]
    assert count("r[1-2]-n[01-04]") == 8
    assert fold(names) == "r[1-2]-n[01-04]"
    assert fold(["r1-n01", "r1-n02", "r2-n01", "r2-n02"]) == "r[1-2]-n[01-02]"


def test_padding_and_ordering():
    assert expand("n[08-10]") == ["n08", "n09", "n10"]
    assert expand("n[1-10]") == [f"n{i}" for i in range(1, 11)]
    assert expand("n[1-2],io1") == ["io1", "n1", "n2"]
    assert expand("n1,n01,n1") == ["n1", "n01"]
    assert fold(["n08", "n09", "n10"]) == "n[08-10]"
    assert fold(["n1", "n01"]) == "n[1,01]"
    assert fold(["n10", "n2", "n1"]) == "n[1-2,10]"
    assert fold(["n0005"]) == "n0005"
    assert fold(["login", "master", "login"]) == "login,master"
    assert fold("n0000 n0001 n0002 n0005".split()) == "n[0000-0002,0005]"
    assert fold([]) == "" and fold_list([]) == []
    assert fold_list(["n2", "io1", "n1"]) == ["io1", "n[1-2]"]


def test_runs_across_lengths_and_disjoint_terms():
    assert expand("n[0-9],n[00-05]") == [f"n{i}" for i in range(10)] + [f"n{i:02d}" for i in range(6)]
    assert expand("n[8-12]") == ["n8", "n9", "n10", "n11", "n12"]
    assert expand("n[1-20/3]") == ["n1", "n4", "n7", "n10", "n13", "n16", "n19"]
    assert count("r[1-2]-n[1-2],r[3-4]-n[3-4]") == 8 == len(expand("r[1-2]-n[1-2],r[3-4]-n[3-4]"))
    assert expand("n[1-2]-eth[0-1]") == ["n1-eth0", "n1-eth1", "n2-eth0", "n2-eth1"]
    assert fold(expand("r[1-2]-n[1-2],r3-n5")) == "r[1-2]-n[1-2],r3-n5"


def test_fold_takes_any_iterable_and_unicode():
    assert fold(name for name in ["n2", "n1"]) == "n[1-2]"
    assert fold({"n1", "n3"}) == "n[1,3]"
    assert expand("nœud[1-2],ünï") == ["nœud1", "nœud2", "ünï"]
    assert fold(["nœud1", "nœud2", "ünï"]) == "nœud[1-2],ünï"


def test_plain_and_long_runs():
    assert expand("login") == ["login"]
    serial = "sn1234567890123456789012"  # a 22-digit run is text, not a number
    assert expand(serial) == [serial]
    assert fold([serial, "sn1"]) == f"sn1,{serial}"
    assert expand("a12345678901234567890b[1-2]") == ["a12345678901234567890b1", "a12345678901234567890b2"]


def test_steps_and_overlaps_count_without_expanding():
    assert expand("n[1-10/3]") == ["n1", "n4", "n7", "n10"]
    assert count("n[0-9999999/2],n[0-9999999/3]") == 5_000_000 + 3_333_334 - 1_666_667
    assert count("n[0-5000000],n[2500000-7000000]") == 7_000_001
    assert count("n[1-2]x[1-2],n[2-3]x[2-3]") == 7
    assert count("r[1-1000]-n[1-1000],r[1001-2000]-n[1-1000]") == 2_000_000


# --------------------------------------------------------------------------- ClusterShell


CLUSTERSHELL_AGREES = [
    "n[1-10]",
    "n00[00-05,06,20-40]",
    "r[1-2]-n[01-04]",
    "io[1-3],n[08-10],login",
    "n1[8-12]",
    "n[1-2]0",
    "n[1-9/2],n[2-10/2]",
    "a[1-3]b[1-2]",
    "n[5,1-3],x",
    "gpu%[1-4]",
]


@pytest.mark.parametrize("expr", CLUSTERSHELL_AGREES)
def test_agrees_with_clustershell(expr):
    theirs = NodeSet(expr)
    assert expand(expr) == list(theirs)
    assert count(expr) == len(theirs)
    assert fold(expand(expr)) == str(NodeSet.fromlist(list(theirs)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("n[10-5]", "reversed range 10-5"),
        ("n[1-3", "unbalanced bracket"),
        ("n1-3]", "unbalanced bracket"),
        ("n[]", "empty range"),
        ("n[1,]", "empty range"),
        ("n[a-2]", 'bad number "a"'),
        ("n[1-10/0]", 'bad step "0"'),
        ("n[1[2]]", "nested brackets"),
        ("n1,,n2", "empty part"),
        ("n[1-2][3-4]", "two bracket groups in one number"),
        ("n[1-1234567890123456789]", "too long"),
        ("n[0-99999999]", "expands to 100000000 names, over the limit of 10000000"),
        ("n*", "contains glob characters"),
        ("n[1-3],io?", "contains glob characters"),
    ],
)
def test_errors_name_expression_and_reason(expr, reason):
    for func in (expand, count):
        with pytest.raises(NodeSetError) as info:
            func(expr)
        assert reason in str(info.value)
        assert f'"{expr}"' in str(info.value)


@pytest.mark.parametrize("expr", ["", "   "])
def test_empty_expression(expr):
    with pytest.raises(NodeSetError, match="empty expression"):
        expand(expr)
    with pytest.raises(NodeSetError, match="empty expression"):
        count(expr)


def test_error_is_a_value_error():
    assert issubclass(NodeSetError, ValueError)


def test_limit_is_checked_before_building():
    assert MAX_NAMES == 10_000_000
    for expr in ("n[0-99999999]", "n[0-9999999],m[0-1]", "r[1-100]-n[1-100001]", "n[0-99999999/3]"):
        with pytest.raises(NodeSetError, match="over the limit"):
            expand(expr)
        with pytest.raises(NodeSetError, match="over the limit"):
            count(expr)


def test_limit_counts_the_union(monkeypatch):
    monkeypatch.setattr(nodeset, "MAX_NAMES", 100)
    assert count("n[1-60],n[41-100]") == 100
    assert len(expand("n[1-60],n[41-100]")) == 100
    for expr in ("n[1-101]", "n[1-60],n[50-110]", "n[1-200/2],n[2-200/2]", "r[1-2]-n[1-51]"):
        with pytest.raises(NodeSetError, match="over the limit of 100"):
            count(expr)
        with pytest.raises(NodeSetError, match="over the limit of 100"):
            expand(expr)


def test_fold_rejects_bad_names():
    with pytest.raises(TypeError):
        fold(["n1", 2])
    for bad in ("n[1]", "a,b", "n*", ""):
        with pytest.raises(NodeSetError):
            fold([bad])


def test_is_glob():
    assert is_glob("n*") and is_glob("n00?") and is_glob("io*,n[1-2]")
    assert not is_glob("n[1-2],io1")
