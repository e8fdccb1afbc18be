# cython: language_level=3, embedsignature=True
"""Node-range expressions such as ``n[01-10],io1``: expand, count and fold them in C loops.

The semantics are ClusterShell's ``NodeSet`` (what users of ``n[01-10]`` already know);
the implementation is native because the master expands and folds node lists of up to
millions of names on hot paths (``perceus node list``, nodescript environments).

The model, made explicit:

* A name splits into a *pattern* and its *digit runs*: ``r1-n01`` is pattern
  ``r%s-n%s`` (a literal ``%`` is written ``%%``, as ClusterShell does) with the runs
  ``1`` and ``01``.  Runs longer than 18 digits stay plain text, so every run fits an
  int64.  Names sort by pattern string, then run by run.
* A run is one int64 *key* that keeps its length: ``key = OFF[L] + value`` with
  ``OFF[L] = 10 + 100 + ... + 10**(L-1)``.  Keys order runs by (length, value), which is
  ClusterShell's order (``n9 n10`` and ``n1 n2 n01``), and a key gives back the exact
  string, so ``n1`` and ``n01`` stay different names.
* A set of keys is kept as sorted, disjoint arithmetic runs ``(start, step, count)``:
  ``n[0000000-0999999]`` is a single run of a million keys, so counting and the
  ``MAX_NAMES`` check never touch the names themselves.

Where this differs from ClusterShell, on purpose: an empty expression is an error, not
an empty set; padding comes from a range's start alone, so ``n[001-3]`` and the guide's
``n00[99-199]`` (n0099..n0199) expand instead of failing with "padding length mismatch";
there are no negative numbers; digit runs over 18 digits are text; nothing past
``MAX_NAMES``; multi-dimensional sets iterate fully sorted and fold dimension by
dimension (last first), which can split them differently from RangeSetND.
"""

import itertools
import re
from collections.abc import Iterable

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy


cdef extern from "Python.h":
    ctypedef struct PyObject
    ctypedef unsigned char Py_UCS1
    PyObject* PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar) except NULL
    Py_UCS1* PyUnicode_1BYTE_DATA(PyObject* o)
    PyObject* PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors) except NULL
    object _decode "PyUnicode_DecodeUTF8"(const char* s, Py_ssize_t size, const char* errors)
    const char* PyUnicode_AsUTF8AndSize(PyObject* o, Py_ssize_t* size) except NULL
    bint PyUnicode_Check(PyObject* o)
    object PyList_New(Py_ssize_t size)
    void PyList_SET_ITEM(object lst, Py_ssize_t i, PyObject* o)
    object PySequence_Fast(object o, const char* message)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)
    PyObject** PySequence_Fast_ITEMS(object o)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    void _incref "Py_INCREF"(object o)
    void _prefetch "__builtin_prefetch"(const void* p) nogil


class NodeSetError(ValueError):
    """A malformed node-range expression, or one that expands past ``MAX_NAMES``.

    The message names the expression and the reason, e.g.
    ``reversed range 10-5 in "n[10-5]"``.
    """


MAX_NAMES = 10_000_000
"""Most names one expression may expand to; checked before anything is allocated."""

DEF MAXRUN = 18            # longest digit run treated as a number (10**18 < 2**63)

cdef int64_t POW10[MAXRUN + 1]     # POW10[i] = 10**i
cdef int64_t OFF[MAXRUN + 2]       # OFF[L]: first key of runs of length L; OFF[19] ends the space
cdef int64_t LO[MAXRUN + 1]        # LO[L]: smallest value whose natural length is L (LO[1] = 0)


cdef void _init_tables() noexcept:
    cdef int i
    POW10[0] = 1
    for i in range(1, MAXRUN + 1):
        POW10[i] = POW10[i - 1] * 10
    OFF[0] = 0
    OFF[1] = 0
    for i in range(1, MAXRUN + 1):
        OFF[i + 1] = OFF[i] + POW10[i]
    LO[0] = 0
    LO[1] = 0
    for i in range(2, MAXRUN + 1):
        LO[i] = POW10[i - 1]


_init_tables()

_DIGITS_OR_NOT = re.compile(r"[0-9]+|[^0-9]+")
_BAD_NAME_CHARS = frozenset(",[]*?")


# --------------------------------------------------------------------------- small C helpers


cdef inline bint _isdigit(char c) noexcept nogil:
    return c >= 48 and c <= 57


cdef inline int _key_len(int64_t key) noexcept nogil:
    """Length of the digit run a key stands for."""
    cdef int L = 1
    while L < MAXRUN and key >= OFF[L + 1]:
        L += 1
    return L


cdef inline int _ndigits(int64_t v) noexcept nogil:
    """Natural decimal length of v >= 0."""
    cdef int n = 1
    while n <= MAXRUN and v >= POW10[n]:
        n += 1
    return n


cdef inline void _write_digits(char* p, int64_t v, int L) noexcept nogil:
    """Write v as exactly L decimal digits, zero-padded on the left."""
    cdef int j = L - 1
    while j >= 0:
        p[j] = <char>(48 + v % 10)
        v = v // 10
        j -= 1


cdef inline void _incr_digits(char* p, int L) noexcept nogil:
    """Add one to an L-digit decimal in place (the caller knows it does not overflow)."""
    cdef int j = L - 1
    while j > 0 and p[j] == 57:
        p[j] = 48
        j -= 1
    p[j] += 1


cdef inline int _write_num(char* p, int64_t v, int w) noexcept nogil:
    """Write v zero-padded to width w (0: natural); return the length written."""
    cdef int L = _ndigits(v)
    if w > L:
        L = w
    _write_digits(p, v, L)
    return L


cdef inline int64_t _parse_digits(const char* p, Py_ssize_t n) noexcept nogil:
    cdef int64_t v = 0
    cdef Py_ssize_t i
    for i in range(n):
        v = v * 10 + (p[i] - 48)
    return v


cdef int _cmp_i64(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


def _key_str(int64_t key) -> str:
    """The digit string a key stands for (used by the slow paths)."""
    cdef char buf[MAXRUN + 1]
    cdef int L = _key_len(key)
    _write_digits(buf, key - OFF[L], L)
    return buf[:L].decode("ascii")


cdef inline int64_t _key_of(str digits):
    return OFF[len(digits)] + int(digits)


# --------------------------------------------------------------------------- sets of keys

cdef struct Run:
    int64_t s      # first key
    int64_t d      # step (1 for a single key)
    int64_t n      # number of keys


cdef struct RunBuf:
    Run* r
    Py_ssize_t n
    Py_ssize_t cap


cdef struct Iv:
    int64_t s
    int64_t e


cdef int _rb_grow(RunBuf* b) except -1:
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 16
    cdef Run* r = <Run*>realloc(b.r, cap * sizeof(Run))
    if r == NULL:
        raise MemoryError()
    b.r = r
    b.cap = cap
    return 0


cdef int _rb_value(RunBuf* b, int64_t v) except -1:
    """Append key v (greater than all before): extend the last run when the step fits.

    Greedy on the sorted keys, so equal sets always give identical run lists.
    """
    cdef Run* last
    if b.n:
        last = &b.r[b.n - 1]
        if last.n == 1:
            last.d = v - last.s
            last.n = 2
            return 0
        if v - (last.s + (last.n - 1) * last.d) == last.d:
            last.n += 1
            return 0
    if b.n == b.cap:
        _rb_grow(b)
    b.r[b.n].s = v
    b.r[b.n].d = 1
    b.r[b.n].n = 1
    b.n += 1
    return 0


cdef int _rb_interval(RunBuf* b, int64_t a, int64_t m) except -1:
    """Append the m consecutive keys a..a+m-1, as m calls of _rb_value would."""
    _rb_value(b, a)
    if m > 1:
        if b.r[b.n - 1].d == 1:
            b.r[b.n - 1].n += m - 1
        else:
            if b.n == b.cap:
                _rb_grow(b)
            b.r[b.n].s = a + 1
            b.r[b.n].d = 1
            b.r[b.n].n = m - 1
            b.n += 1
    return 0


cdef int _cmp_iv(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const Iv*>a).s
    cdef int64_t y = (<const Iv*>b).s
    return (x > y) - (x < y)


cdef int _cmp_run(const void* a, const void* b) noexcept nogil:
    cdef const Run* x = <const Run*>a
    cdef const Run* y = <const Run*>b
    if x.s != y.s:
        return (x.s > y.s) - (x.s < y.s)
    if x.d != y.d:
        return (x.d > y.d) - (x.d < y.d)
    return (x.n > y.n) - (x.n < y.n)


cdef void _sift_down(int* heap, Py_ssize_t hn, Py_ssize_t i, const int64_t* cur) noexcept nogil:
    cdef int x = heap[i]
    cdef Py_ssize_t c
    while True:
        c = 2 * i + 1
        if c >= hn:
            break
        if c + 1 < hn and cur[heap[c + 1]] < cur[heap[c]]:
            c += 1
        if cur[heap[c]] >= cur[x]:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = x


cdef tuple _union(object aps, int64_t limit, bint keep=True):
    """Union of arithmetic runs of keys -> (sorted disjoint runs, count, exact).

    Without materialising keys: step-1 runs are merged as intervals; stepped runs
    (``/STEP``) are walked by a k-way merge that jumps over the intervals.  When the
    union passes ``limit`` it stops early: runs is empty, count > limit, and exact says
    whether count is the true size.  keep=False only counts (no runs are built).
    """
    cdef Py_ssize_t na = len(aps), ni = 0, ns = 0, hn = 0, i, j
    cdef Iv* iv = <Iv*>malloc((na + 1) * sizeof(Iv))
    cdef Run* st = <Run*>malloc((na + 1) * sizeof(Run))
    cdef int64_t* cur = NULL
    cdef int64_t* rem = NULL
    cdef int* heap = NULL
    cdef RunBuf b
    cdef int64_t total = 0, s, d, m, v, k, last = 0
    cdef bint have_last = False, is_sorted = True
    b.r = NULL
    b.n = 0
    b.cap = 0
    try:
        if iv == NULL or st == NULL:
            raise MemoryError()
        for ap in aps:
            s, d, m = ap
            if m <= 0:
                continue
            if m == 1 or d == 1:
                iv[ni].s = s
                iv[ni].e = s + m - 1
                if ni and s < iv[ni - 1].s:
                    is_sorted = False
                ni += 1
            else:
                st[ns].s = s
                st[ns].d = d
                st[ns].n = m
                ns += 1
        if ni > 1 and not is_sorted:
            qsort(iv, ni, sizeof(Iv), _cmp_iv)
        if ni:
            j = 0
            for i in range(1, ni):
                if iv[i].s <= iv[j].e + 1:
                    if iv[i].e > iv[j].e:
                        iv[j].e = iv[i].e
                else:
                    j += 1
                    iv[j] = iv[i]
            ni = j + 1
        for i in range(ni):
            total += iv[i].e - iv[i].s + 1
        if total > limit:
            return (), total, True
        if ns == 0:
            if keep:
                for i in range(ni):
                    _rb_interval(&b, iv[i].s, iv[i].e - iv[i].s + 1)
        elif ns == 1 and ni == 0:
            total = st[0].n
            if total > limit:
                return (), total, True
            _rb_grow(&b)
            b.r[0] = st[0]
            b.n = 1
        else:
            qsort(st, ns, sizeof(Run), _cmp_run)
            j = 0
            for i in range(1, ns):
                if _cmp_run(&st[i], &st[j]) != 0:
                    j += 1
                    st[j] = st[i]
            ns = j + 1
            cur = <int64_t*>malloc(ns * sizeof(int64_t))
            rem = <int64_t*>malloc(ns * sizeof(int64_t))
            heap = <int*>malloc(ns * sizeof(int))
            if cur == NULL or rem == NULL or heap == NULL:
                raise MemoryError()
            for i in range(ns):
                cur[i] = st[i].s
                rem[i] = st[i].n
                heap[i] = <int>i
            hn = ns
            i = hn // 2 - 1
            while i >= 0:
                _sift_down(heap, hn, i, cur)
                i -= 1
            total = 0
            j = 0
            while hn > 0:
                i = heap[0]
                v = cur[i]
                while j < ni and iv[j].e < v:
                    if keep:
                        _rb_interval(&b, iv[j].s, iv[j].e - iv[j].s + 1)
                    total += iv[j].e - iv[j].s + 1
                    j += 1
                if j < ni and iv[j].s <= v:
                    # inside an interval: jump this run past its end
                    k = (iv[j].e - v) // st[i].d + 1
                else:
                    if not have_last or v != last:
                        if keep:
                            _rb_value(&b, v)
                        total += 1
                        last = v
                        have_last = True
                    k = 1
                if k >= rem[i]:
                    hn -= 1
                    heap[0] = heap[hn]
                else:
                    cur[i] += k * st[i].d
                    rem[i] -= k
                if hn:
                    _sift_down(heap, hn, 0, cur)
                if total > limit:
                    return (), total, False
            while j < ni:
                if keep:
                    _rb_interval(&b, iv[j].s, iv[j].e - iv[j].s + 1)
                total += iv[j].e - iv[j].s + 1
                j += 1
            if total > limit:
                return (), total, True
        return tuple([(b.r[i].s, b.r[i].d, b.r[i].n) for i in range(b.n)]), total, True
    finally:
        free(iv)
        free(st)
        free(cur)
        free(rem)
        free(heap)
        free(b.r)


def _run_keys(runs) -> list:
    """All keys of a run list (slow paths only)."""
    out = []
    for s, d, n in runs:
        out.extend(range(s, s + d * n, d))
    return out


cdef bint _runs_disjoint(tuple a, tuple b):
    """True when two run lists certainly share no key (conservative with steps)."""
    cdef Py_ssize_t i = 0, j = 0, na = len(a), nb = len(b)
    cdef int64_t s1, d1, n1, s2, d2, n2
    while i < na and j < nb:
        s1, d1, n1 = a[i]
        s2, d2, n2 = b[j]
        if s1 + d1 * (n1 - 1) < s2:
            i += 1
        elif s2 + d2 * (n2 - 1) < s1:
            j += 1
        else:
            return False
    return True


# --------------------------------------------------------------------------- name generation

cdef struct Gen:
    int k
    char* buf
    Py_ssize_t blen
    const char** pp        # the k+1 literal pieces around the digit runs
    Py_ssize_t* pl
    Run* runs              # every dimension's runs, one after the other
    Py_ssize_t* first      # per dimension: index of its first run, number of runs
    Py_ssize_t* nruns
    Py_ssize_t* ri         # per dimension: current run, index in it, key, length, offset
    int64_t* ii
    int64_t* key
    int* L
    Py_ssize_t* dpos


cdef void _gen_write_tail(Gen* g, int d0) noexcept nogil:
    """Rewrite the buffer from dimension d0 on (lengths before d0 are unchanged)."""
    cdef Py_ssize_t pos = 0
    cdef int d
    if d0 > 0:
        pos = g.dpos[d0 - 1] + g.L[d0 - 1]
    for d in range(d0, g.k):
        memcpy(g.buf + pos, g.pp[d], g.pl[d])
        pos += g.pl[d]
        g.dpos[d] = pos
        _write_digits(g.buf + pos, g.key[d] - OFF[g.L[d]], g.L[d])
        pos += g.L[d]
    memcpy(g.buf + pos, g.pp[g.k], g.pl[g.k])
    g.blen = pos + g.pl[g.k]


cdef int _generate(list out, Py_ssize_t pos, list pieces, tuple dims, Py_ssize_t total,
                   bint ascii) except -1:
    """Fill out[pos:pos+total] with the cartesian product of dims, first dimension outermost.

    One char buffer holds the current name; the common step (last dimension, step 1,
    same length) is an in-place decimal increment, and each str is made with
    PyUnicode_New + memcpy.
    """
    cdef Gen g
    cdef int k = len(dims), d, nl
    cdef Py_ssize_t c, nrun = 0, i, buflen = 0
    cdef PyObject* u
    cdef Run* r
    cdef bint inc
    for runs in dims:
        nrun += len(runs)
    for p in pieces:
        buflen += PyBytes_GET_SIZE(p)
    buflen += MAXRUN * k + 1
    g.k = k
    g.buf = <char*>malloc(buflen)
    g.pp = <const char**>malloc((k + 1) * sizeof(char*))
    g.pl = <Py_ssize_t*>malloc((k + 1) * sizeof(Py_ssize_t))
    g.runs = <Run*>malloc((nrun + 1) * sizeof(Run))
    g.first = <Py_ssize_t*>malloc((k + 1) * sizeof(Py_ssize_t))
    g.nruns = <Py_ssize_t*>malloc((k + 1) * sizeof(Py_ssize_t))
    g.ri = <Py_ssize_t*>malloc((k + 1) * sizeof(Py_ssize_t))
    g.ii = <int64_t*>malloc((k + 1) * sizeof(int64_t))
    g.key = <int64_t*>malloc((k + 1) * sizeof(int64_t))
    g.L = <int*>malloc((k + 1) * sizeof(int))
    g.dpos = <Py_ssize_t*>malloc((k + 1) * sizeof(Py_ssize_t))
    try:
        if (g.buf == NULL or g.pp == NULL or g.pl == NULL or g.runs == NULL or g.first == NULL
                or g.nruns == NULL or g.ri == NULL or g.ii == NULL or g.key == NULL
                or g.L == NULL or g.dpos == NULL):
            raise MemoryError()
        for d in range(k + 1):
            g.pp[d] = PyBytes_AS_STRING(pieces[d])
            g.pl[d] = PyBytes_GET_SIZE(pieces[d])
        nrun = 0
        for d in range(k):
            g.first[d] = nrun
            g.nruns[d] = len(dims[d])
            for s, step, n in dims[d]:
                g.runs[nrun].s = s
                g.runs[nrun].d = step
                g.runs[nrun].n = n
                nrun += 1
            g.ri[d] = g.first[d]
            g.ii[d] = 0
            g.key[d] = g.runs[g.first[d]].s
            g.L[d] = _key_len(g.key[d])
        _gen_write_tail(&g, 0)
        for c in range(total):
            if ascii:
                u = PyUnicode_New(g.blen, 127)
                memcpy(PyUnicode_1BYTE_DATA(u), g.buf, g.blen)
            else:
                u = PyUnicode_DecodeUTF8(g.buf, g.blen, NULL)
            PyList_SET_ITEM(out, pos + c, u)
            if c + 1 == total:
                break
            # odometer: advance the last dimension, carrying into earlier ones
            d = k - 1
            inc = False
            while True:
                r = &g.runs[g.ri[d]]
                g.ii[d] += 1
                if g.ii[d] < r.n:
                    g.key[d] += r.d
                    inc = r.d == 1
                    break
                g.ii[d] = 0
                g.ri[d] += 1
                if g.ri[d] < g.first[d] + g.nruns[d]:
                    g.key[d] = g.runs[g.ri[d]].s
                    break
                g.ri[d] = g.first[d]
                g.key[d] = g.runs[g.ri[d]].s
                d -= 1
            if d == k - 1:
                nl = g.L[d]
                while nl < MAXRUN and g.key[d] >= OFF[nl + 1]:
                    nl += 1
                if nl == g.L[d]:
                    if inc:
                        _incr_digits(g.buf + g.dpos[d], nl)
                    else:
                        _write_digits(g.buf + g.dpos[d], g.key[d] - OFF[nl], nl)
                    continue
            for i in range(d, k):
                g.L[i] = _key_len(g.key[i])
            _gen_write_tail(&g, d)
        return 0
    finally:
        free(g.buf)
        free(g.pp)
        free(g.pl)
        free(g.runs)
        free(g.first)
        free(g.nruns)
        free(g.ri)
        free(g.ii)
        free(g.key)
        free(g.L)
        free(g.dpos)


# --------------------------------------------------------------------------- parsing

cdef str _shown(str expr):
    """The expression as quoted in error messages (long ones are cut)."""
    if len(expr) > 200:
        return expr[:197] + "..."
    return expr


cdef _over(str shown, object n, bint exact):
    limit = MAX_NAMES
    if exact:
        raise NodeSetError(f'"{shown}" expands to {n} names, over the limit of {limit}')
    raise NodeSetError(f'"{shown}" expands to more than {limit} names, over the limit of {limit}')


cdef list _split_parts(str expr, str shown):
    """Top-level comma-separated parts; checks brackets are balanced and not nested."""
    cdef Py_ssize_t i, n = len(expr), start = 0
    cdef Py_UCS4 c
    cdef bint inside = False
    parts = []
    for i in range(n):
        c = expr[i]
        if c == u"[":
            if inside:
                raise NodeSetError(f'nested brackets in "{shown}"')
            inside = True
        elif c == u"]":
            if not inside:
                raise NodeSetError(f'unbalanced bracket in "{shown}"')
            inside = False
        elif c == u"," and not inside:
            parts.append(expr[start:i])
            start = i + 1
    if inside:
        raise NodeSetError(f'unbalanced bracket in "{shown}"')
    parts.append(expr[start:])
    return parts


cdef int64_t _number(str text, str shown, str what) except -1:
    if not text or not (text.isascii() and text.isdigit()):
        raise NodeSetError(f'bad {what} "{text}" in "{shown}"')
    if len(text) > MAXRUN:
        raise NodeSetError(f'{what} "{text}" too long (over {MAXRUN} digits) in "{shown}"')
    return int(text)


cdef list _parse_group(str content, str shown):
    """Bracket content -> [(start, stop, step, width, start text, stop text)]; width 0 is unpadded."""
    cdef int64_t a, b, step
    ranges = []
    for elem in content.split(","):
        elem = elem.strip()
        if not elem:
            raise NodeSetError(f'empty range in "{shown}"')
        step = 1
        rng = elem
        if "/" in elem:
            rng, st = elem.split("/", 1)
            step = _number(st.strip(), shown, "step")
            if step == 0:
                raise NodeSetError(f'bad step "{st.strip()}" in "{shown}"')
        if "-" in rng:
            left, right = rng.split("-", 1)
            left = left.strip()
            right = right.strip()
        else:
            left = right = rng.strip()
        a = _number(left, shown, "number")
        b = _number(right, shown, "number")
        if a > b:
            raise NodeSetError(f'reversed range {left}-{right} in "{shown}"')
        ranges.append((a, b, step, _width(left), left, right))
    return ranges


cdef inline int _width(str start):
    """Padding set by a range's start: its length when it has a leading zero."""
    return len(start) if len(start) > 1 and start[0] == u"0" else 0


cdef list _tokenise(str part, str shown):
    """A part -> literal strings and parsed bracket groups (lists), in order."""
    cdef Py_ssize_t pos = 0, lb, rb, n = len(part)
    tokens = []
    while pos < n:
        lb = part.find(u"[", pos)
        if lb < 0:
            tokens.append(part[pos:])
            break
        if lb > pos:
            tokens.append(part[pos:lb])
        rb = part.find(u"]", lb)
        tokens.append(_parse_group(part[lb + 1:rb], shown))
        pos = rb + 1
    return tokens


cdef list _group_aps(list ranges, str P, str S, str shown):
    """Keys of one bracket group inside the digit run P<group>S, as arithmetic runs.

    As in ClusterShell, digits just before the bracket join both bounds
    ("n1[8-12]" is n18..n112, "n00[99-199]" is n0099..n0199: the start "0099" sets
    width 4), while digits just after it are appended to each number ("n[1-2]0").
    """
    cdef int sl = len(S), m, mlo, mhi, w, L
    cdef int64_t Sv = int(S) if S else 0
    cdef int64_t a, b, step, lo, hi, first, cnt
    aps = []
    for a, b, step, w, left, right in ranges:
        if P:
            left = P + left
            right = P + right
            a = _number(left, shown, "number")
            b = _number(right, shown, "number")
            if a > b:
                raise NodeSetError(f'reversed range {left}-{right} in "{shown}"')
            w = _width(left)
        mlo = max(w, _ndigits(a))
        mhi = max(w, _ndigits(b))
        if mhi + sl > MAXRUN:
            raise NodeSetError(f'number "{right}{S}" too long (over {MAXRUN} digits) in "{shown}"')
        for m in range(mlo, mhi + 1):
            lo = 0 if m == w else LO[m]
            hi = POW10[m] - 1
            if a > lo:
                lo = a
            if b < hi:
                hi = b
            if lo > hi:
                continue
            first = a + ((lo - a + step - 1) // step) * step
            if first > hi:
                continue
            cnt = (hi - first) // step + 1
            L = m + sl
            aps.append((OFF[L] + first * POW10[sl] + Sv, step * POW10[sl] if cnt > 1 else 1, cnt))
    return aps


cdef object _analyse(list tokens, str shown):
    """A term -> (pattern, pieces, dims): dims[i] lists the key runs of digit run i."""
    atoms = []
    for tok in tokens:
        if type(tok) is list:
            atoms.append((2, tok))
        else:
            for piece in _DIGITS_OR_NOT.findall(tok):
                atoms.append((1 if u"0" <= piece[0] <= u"9" else 0, piece))
    pieces = []
    text = []
    dims = []
    cdef Py_ssize_t i = 0, n = len(atoms)
    cdef int ng
    while i < n:
        kind, val = atoms[i]
        if kind == 0:
            text.append(val)
            i += 1
            continue
        before = []
        after = []
        grp = None
        ng = 0
        while i < n and atoms[i][0] != 0:
            kind, val = atoms[i]
            if kind == 2:
                ng += 1
                grp = val
            elif ng == 0:
                before.append(val)
            else:
                after.append(val)
            i += 1
        if ng > 1:
            # ClusterShell refuses this too: "n[1-2][3-4]" has no single sensible reading
            raise NodeSetError(f'two bracket groups in one number in "{shown}"')
        P = "".join(before)
        if ng == 0:
            if len(P) > MAXRUN:
                text.append(P)
                continue
            aps = [(_key_of(P), 1, 1)]
        else:
            aps = _group_aps(grp, P, "".join(after), shown)
        pieces.append("".join(text))
        text = []
        dims.append(aps)
    pieces.append("".join(text))
    return _pattern_of(pieces), pieces, dims


cdef str _pattern_of(list pieces):
    return u"%s".join([p.replace(u"%", u"%%") for p in pieces])


cdef tuple _parse_name(str name):
    """A name -> (pattern, pieces, keys): its digit runs of at most 18 digits as keys."""
    cdef Py_ssize_t n, i = 0, j, tstart = 0
    cdef const char* s = PyUnicode_AsUTF8AndSize(<PyObject*>name, &n)
    pieces = []
    keys = []
    while i < n:
        if _isdigit(s[i]):
            j = i
            while j < n and _isdigit(s[j]):
                j += 1
            if j - i <= MAXRUN:
                pieces.append(_decode(s + tstart, i - tstart, NULL))
                keys.append(OFF[j - i] + _parse_digits(s + i, j - i))
                tstart = j
            i = j
        else:
            i += 1
    pieces.append(_decode(s + tstart, n - tstart, NULL))
    return _pattern_of(pieces), pieces, tuple(keys)


# --------------------------------------------------------------------------- planning

cdef class _Group:
    """All terms of one pattern: each term is a product of per-dimension key sets."""
    cdef public str pattern
    cdef public list pieces
    cdef public int k
    cdef public list terms
    cdef public object kind        # 'plain' | 'prod' | 'multi' once resolved
    cdef public tuple dims         # 'prod': the run lists of the single product
    cdef public object points      # 'multi': the set of key tuples, once materialised
    cdef public object count

    def __init__(self, pattern, pieces):
        self.pattern = pattern
        self.pieces = pieces
        self.k = len(pieces) - 1
        self.terms = []
        self.points = None


cdef _Group _group_for(dict groups, str pattern, list pieces):
    cdef _Group g = groups.get(pattern)
    if g is None:
        g = _Group(pattern, pieces)
        groups[pattern] = g
    return g


cdef int _add_name(dict groups, str name) except -1:
    pattern, pieces, keys = _parse_name(name)
    _group_for(groups, pattern, pieces).terms.append([[(key, 1, 1)] for key in keys])
    return 0


cdef object _product(list dims):
    total = 1
    for runs in dims:
        total *= sum([r[2] for r in runs])
    return total


cdef list _resolve_nd(list terms, int k, int64_t limit, str shown):
    """Normalise each term's dimensions and merge terms that differ in one dimension only."""
    cdef Py_ssize_t j
    out = []
    for term in terms:
        dims = []
        for aps in term:
            if len(aps) == 1:
                s, d, n = aps[0]
                dims.append(((s, d if n > 1 else 1, n),))
            else:
                runs, cnt, exact = _union(aps, limit)
                if cnt > limit:
                    _over(shown, cnt, exact)
                dims.append(runs)
        out.append(tuple(dims))
    changed = True
    while changed and len(out) > 1:
        changed = False
        j = k - 1
        while j >= 0 and len(out) > 1:
            buckets = {}
            for t in out:
                buckets.setdefault(t[:j] + t[j + 1:], []).append(t)
            if len(buckets) < len(out):
                merged = []
                for ts in buckets.values():
                    if len(ts) == 1:
                        merged.append(ts[0])
                        continue
                    runs, cnt, exact = _union([r for t in ts for r in t[j]], limit)
                    if cnt > limit:
                        _over(shown, cnt, exact)
                    merged.append(ts[0][:j] + (runs,) + ts[0][j + 1:])
                out = merged
                changed = True
            j -= 1
    return out


cdef bint _terms_disjoint(list terms):
    cdef Py_ssize_t i, j, d
    if len(terms) > 64:
        return False
    for i in range(len(terms)):
        for j in range(i + 1, len(terms)):
            for d in range(len(terms[i])):
                if _runs_disjoint(terms[i][d], terms[j][d]):
                    break
            else:
                return False
    return True


cdef object _materialise(_Group g, int64_t budget, str shown):
    points = set()
    for term in g.terms:
        if _product(list(term)) > budget:
            _over(shown, 0, False)
        points.update(itertools.product(*[_run_keys(runs) for runs in term]))
        if len(points) > budget:
            _over(shown, 0, False)
    return points


cdef tuple _plan(str expr, bint for_count):
    """Parse and resolve an expression -> (groups sorted by pattern, total names)."""
    if not expr.strip():
        raise NodeSetError("empty expression")
    cdef str shown = _shown(expr)
    if u"*" in expr or u"?" in expr:
        raise NodeSetError(f'"{shown}" contains glob characters; use is_glob/match')
    cdef int64_t limit = MAX_NAMES
    cdef dict groups = {}
    cdef _Group g
    for part in _split_parts(expr, shown):
        part = part.strip()
        if not part:
            raise NodeSetError(f'empty part in "{shown}"')
        if u"[" not in part:
            _add_name(groups, part)
            continue
        pattern, pieces, dims = _analyse(_tokenise(part, shown), shown)
        _group_for(groups, pattern, pieces).terms.append(dims)

    total = 0
    plan = []
    for pattern in sorted(groups):
        g = groups[pattern]
        budget = limit - total
        if g.k == 0:
            g.kind = "plain"
            g.count = 1
        elif g.k == 1:
            runs, cnt, exact = _union([ap for term in g.terms for ap in term[0]], budget, not for_count)
            if cnt > budget:
                _over(shown, total + cnt, exact)
            g.kind = "prod"
            g.dims = (runs,)
            g.count = cnt
        else:
            g.terms = _resolve_nd(g.terms, g.k, limit, shown)
            if len(g.terms) == 1:
                g.kind = "prod"
                g.dims = g.terms[0]
                g.count = _product(list(g.dims))
                if g.count > budget:
                    _over(shown, total + g.count, True)
            else:
                g.kind = "multi"
                if for_count and _terms_disjoint(g.terms):
                    g.count = sum([_product(list(t)) for t in g.terms])
                    if g.count > budget:
                        _over(shown, total + g.count, True)
                else:
                    g.points = _materialise(g, budget, shown)
                    g.count = len(g.points)
        total += g.count
        plan.append(g)
    return plan, total


# --------------------------------------------------------------------------- public: expand

def is_glob(expr: str) -> bool:
    """True if the expression holds glob characters (``*`` or ``?``).

    Globs are matched by the caller against known names; ``expand`` refuses them.
    """
    return u"*" in expr or u"?" in expr


def expand(expr: str) -> list[str]:
    """Expand a node-range expression into its names (``list[str]``).

    ``"n[1-2],io1"`` -> ``['io1', 'n1', 'n2']``: top-level commas separate parts;
    brackets hold ``N``, ``A-B`` and ``A-B/STEP`` lists; a start with a leading zero sets
    the padding (``n[08-10]`` -> n08 n09 n10); several groups give a cartesian product,
    first group outermost.  The result is a set in ClusterShell's order: deduplicated,
    by pattern string, then numerically (shorter digit strings first).

    Raises NodeSetError for malformed expressions, glob characters, and expressions
    over ``MAX_NAMES`` names (checked before any name is built).
    """
    cdef _Group g
    cdef Py_ssize_t pos = 0
    plan, total = _plan(expr, False)
    cdef list out = PyList_New(total)
    for g in plan:
        if g.kind == "plain":
            PyList_SET_ITEM(out, pos, <PyObject*>g.pieces[0])
            # SET_ITEM steals a reference: give it one
            _incref(g.pieces[0])
            pos += 1
        elif g.kind == "prod":
            bpieces = [p.encode("utf-8") for p in g.pieces]
            _generate(out, pos, bpieces, g.dims, g.count,
                      all([len(p) == len(q) for p, q in zip(bpieces, g.pieces)]))
            pos += g.count
        else:  # "multi": overlapping nD terms, already materialised as key tuples
            pieces = g.pieces
            for point in sorted(g.points):
                name = [pieces[0]]
                for d in range(g.k):
                    name.append(_key_str(point[d]))
                    name.append(pieces[d + 1])
                s = "".join(name)
                _incref(s)
                PyList_SET_ITEM(out, pos, <PyObject*>s)
                pos += 1
    return out


def count(expr: str) -> int:
    """Number of names ``expand(expr)`` returns, without building them when possible.

    Sizes come from the key runs (product over dimensions, union within a pattern);
    only overlapping multi-dimensional terms are expanded (as key tuples, not strings).
    Raises NodeSetError like ``expand``, including past ``MAX_NAMES``.
    """
    plan, total = _plan(expr, True)
    return total


# --------------------------------------------------------------------------- fold

cdef Py_ssize_t _fold_keys(const int64_t* keys, Py_ssize_t n,
                           int64_t* ow, int64_t* oa, int64_t* ob) noexcept nogil:
    """Sorted keys (duplicates allowed) -> runs (width, first, last); returns their number.

    A run of width w may hold value v written s iff format(v, "0{w}d") == s, i.e. the
    run's length L == max(w, natural length of v); width 0 is unpadded.
    """
    cdef Py_ssize_t i = 0, nr = 0
    cdef int L = 1, w
    cdef int64_t key, prev, v, a, b
    while i < n:
        key = keys[i]
        while L < MAXRUN and key >= OFF[L + 1]:
            L += 1
        v = key - OFF[L]
        w = L if v < LO[L] else 0
        a = v
        b = v
        prev = key
        i += 1
        while i < n:
            key = keys[i]
            if key == prev:
                i += 1
                continue
            while L < MAXRUN and key >= OFF[L + 1]:
                L += 1
            v = key - OFF[L]
            if v == b + 1 and (L == w or v >= LO[L]):
                b = v
                prev = key
                i += 1
            else:
                break
        ow[nr] = w
        oa[nr] = a
        ob[nr] = b
        nr += 1
    return nr


cdef int _radix_sort(int64_t* keys, Py_ssize_t n) except -1:
    """LSD radix sort of non-negative keys, 8 bits a pass; passes where every key has the
    same byte are skipped (node numbers rarely use more than 3-4 bytes)."""
    cdef Py_ssize_t* counts = <Py_ssize_t*>calloc(8 * 256, sizeof(Py_ssize_t))
    cdef int64_t* tmp = <int64_t*>malloc(n * sizeof(int64_t))
    cdef int64_t* src = keys
    cdef int64_t* dst = tmp
    cdef int64_t* sw
    cdef uint64_t k
    cdef Py_ssize_t i, total, c
    cdef int p, shift
    try:
        if counts == NULL or tmp == NULL:
            raise MemoryError()
        for i in range(n):
            k = <uint64_t>keys[i]
            for p in range(8):
                counts[p * 256 + ((k >> (8 * p)) & 255)] += 1
        for p in range(8):
            shift = 8 * p
            if counts[p * 256 + ((<uint64_t>keys[0] >> shift) & 255)] == n:
                continue
            total = 0
            for i in range(256):
                c = counts[p * 256 + i]
                counts[p * 256 + i] = total
                total += c
            for i in range(n):
                k = <uint64_t>src[i]
                c = p * 256 + ((k >> shift) & 255)
                dst[counts[c]] = src[i]
                counts[c] += 1
            sw = src
            src = dst
            dst = sw
        if src != keys:
            memcpy(keys, src, n * sizeof(int64_t))
        return 0
    finally:
        free(counts)
        free(tmp)


cdef int _sort_keys(int64_t* keys, Py_ssize_t n) except -1:
    """Sort in place unless already sorted (the common case for generated lists)."""
    cdef Py_ssize_t i
    for i in range(1, n):
        if keys[i] < keys[i - 1]:
            if n < 256:
                qsort(keys, n, sizeof(int64_t), _cmp_i64)
            else:
                _radix_sort(keys, n)
            return 0
    return 0


cdef object _render(bytes prefix, bytes suffix, int64_t* keys, Py_ssize_t n):
    """prefix + folded runs + suffix as str: ``n[0000-0002,0005]``, or ``n0005`` for one."""
    cdef int64_t* w = <int64_t*>malloc((n + 1) * 3 * sizeof(int64_t))
    cdef char* buf = NULL
    cdef Py_ssize_t nr, i, pos, pl = len(prefix), sl = len(suffix)
    if w == NULL:
        raise MemoryError()
    try:
        _sort_keys(keys, n)
        nr = _fold_keys(keys, n, w, w + n + 1, w + 2 * (n + 1))
        buf = <char*>malloc(pl + sl + nr * (2 * MAXRUN + 4) + 8)
        if buf == NULL:
            raise MemoryError()
        memcpy(buf, PyBytes_AS_STRING(prefix), pl)
        pos = pl
        _render_runs(buf, &pos, w, w + n + 1, w + 2 * (n + 1), nr)
        memcpy(buf + pos, PyBytes_AS_STRING(suffix), sl)
        pos += sl
        return _decode(buf, pos, NULL)
    finally:
        free(w)
        free(buf)


cdef void _render_runs(char* buf, Py_ssize_t* ppos, const int64_t* ow, const int64_t* oa,
                       const int64_t* ob, Py_ssize_t nr) noexcept nogil:
    cdef Py_ssize_t pos = ppos[0], i
    cdef bint brackets = nr > 1 or oa[0] != ob[0]
    if brackets:
        buf[pos] = 91   # [
        pos += 1
    for i in range(nr):
        if i:
            buf[pos] = 44   # ,
            pos += 1
        pos += _write_num(buf + pos, oa[i], <int>ow[i])
        if ob[i] != oa[i]:
            buf[pos] = 45   # -
            pos += 1
            pos += _write_num(buf + pos, ob[i], <int>ow[i])
    if brackets:
        buf[pos] = 93   # ]
        pos += 1
    ppos[0] = pos


cdef class _Pat1:
    """Keys collected for one single-run pattern (prefix, digits, suffix)."""
    cdef int64_t* keys
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef bytes prefix
    cdef bytes suffix
    cdef str pattern

    def __cinit__(self, bytes prefix, bytes suffix):
        self.prefix = prefix
        self.suffix = suffix
        self.pattern = _pattern_of([prefix.decode("utf-8"), suffix.decode("utf-8")])
        self.keys = NULL
        self.n = 0
        self.cap = 0

    def __dealloc__(self):
        free(self.keys)

    cdef inline int add(self, int64_t key) except -1:
        cdef int64_t* k
        if self.n == self.cap:
            self.cap = self.cap * 2 if self.cap else 64
            k = <int64_t*>realloc(self.keys, self.cap * sizeof(int64_t))
            if k == NULL:
                raise MemoryError()
            self.keys = k
        self.keys[self.n] = key
        self.n += 1
        return 0

    cdef object render(self):
        return _render(self.prefix, self.suffix, self.keys, self.n)


cdef _check_name(str name):
    if not name:
        raise NodeSetError("empty name")
    for c in name:
        if c in _BAD_NAME_CHARS:
            raise NodeSetError(f'bad character "{c}" in name "{name}"')


cdef _Pat1 _pat1_for(dict pats, bytes prefix, bytes suffix):
    cdef bytes key = prefix + b"\xff" + suffix      # 0xff never occurs in UTF-8
    cdef _Pat1 p = pats.get(key)
    if p is None:
        _check_name(prefix.decode("utf-8") + "0" + suffix.decode("utf-8"))
        p = _Pat1(prefix, suffix)
        pats[key] = p
    return p


def _fold_runs(keys) -> tuple:
    """Keys of one dimension -> tuple of (width, first, last) runs (nD slow path)."""
    cdef Py_ssize_t n = len(keys), i, nr
    cdef int64_t* buf = <int64_t*>malloc((n + 1) * 4 * sizeof(int64_t))
    if buf == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            buf[i] = keys[i]
        _sort_keys(buf, n)
        nr = _fold_keys(buf, n, buf + n + 1, buf + 2 * (n + 1), buf + 3 * (n + 1))
        return tuple([(buf[n + 1 + i], buf[2 * (n + 1) + i], buf[3 * (n + 1) + i])
                      for i in range(nr)])
    finally:
        free(buf)


cdef str _runs_text(tuple runs):
    cdef Py_ssize_t nr = len(runs), i, pos = 0
    cdef int64_t* arr = <int64_t*>malloc((nr + 1) * 3 * sizeof(int64_t))
    cdef char* buf = <char*>malloc(nr * (2 * MAXRUN + 4) + 8)
    try:
        if arr == NULL or buf == NULL:
            raise MemoryError()
        for i in range(nr):
            arr[i], arr[nr + 1 + i], arr[2 * (nr + 1) + i] = runs[i]
        _render_runs(buf, &pos, arr, arr + nr + 1, arr + 2 * (nr + 1), nr)
        return buf[:pos].decode("ascii")
    finally:
        free(arr)
        free(buf)


cdef int64_t _runs_min_key(tuple runs):
    w, a, b = runs[0]
    return OFF[max(<int64_t>w, _ndigits(a))] + a


cdef list _fold_nd(list pieces, list points, int k):
    """Fold key tuples of one nD pattern -> [(sort key, text)].

    The last dimension is folded first; then the points are grouped by everything but
    the next dimension (earlier keys, already-folded later runs) and that one is folded.
    """
    cdef Py_ssize_t d
    items = points
    d = k - 1
    while d >= 0:
        groups = {}
        for it in items:
            gk = it[:d] + it[d + 1:]
            lst = groups.get(gk)
            if lst is None:
                groups[gk] = [it[d]]
            else:
                lst.append(it[d])
        items = [gk[:d] + (_fold_runs(keys),) + gk[d:] for gk, keys in groups.items()]
        d -= 1
    out = []
    for vec in items:
        text = [pieces[0]]
        for d in range(k):
            text.append(_runs_text(vec[d]))
            text.append(pieces[d + 1])
        out.append((tuple([_runs_min_key(r) for r in vec]), "".join(text)))
    return out


def fold_list(names: Iterable[str]) -> list[str]:
    """Fold names into ClusterShell-style parts (``list[str]``), in pattern order.

    ``["n0000", "n0001", "n0002", "n0005", "io1"]`` -> ``["io1", "n[0000-0002,0005]"]``.
    Duplicates are dropped, numbers sort numerically, padding is kept (``n08 n09 n10`` ->
    ``n[08-10]``; ``n1`` and ``n01`` stay distinct); names with several digit runs fold
    dimension by dimension (``r[1-2]-n[01-02]``).  ``expand(",".join(parts))`` gives the
    same set of names back.
    """
    cdef object seq = PySequence_Fast(names, "fold() needs an iterable of names")
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i, ln, b, e, j, rl
    cdef PyObject** items = PySequence_Fast_ITEMS(seq)
    cdef PyObject* o
    cdef const char* s
    cdef const char* cpre = NULL
    cdef const char* csuf = NULL
    cdef Py_ssize_t cplen = -1, cslen = -1
    cdef _Pat1 cur = None
    cdef dict pats = {}
    cdef bint slow
    plain = set()
    nd = {}
    for i in range(n):
        o = items[i]
        if i + 8 < n:
            # names sampled from a big list sit far apart in memory: fetch ahead
            _prefetch(items[i + 8])
        if not PyUnicode_Check(o):
            raise TypeError(f"node names must be str, not {type(<object>o).__name__}")
        s = PyUnicode_AsUTF8AndSize(o, &ln)
        # the last digit run s[b:e]
        e = ln
        while e > 0 and not _isdigit(s[e - 1]):
            e -= 1
        b = e
        while b > 0 and _isdigit(s[b - 1]):
            b -= 1
        rl = e - b
        if rl == 0 or rl > MAXRUN:
            slow = True
        elif (b == cplen and ln - e == cslen and memcmp(s, cpre, b) == 0
                and memcmp(s + e, csuf, cslen) == 0):
            slow = False
        else:
            slow = False
            for j in range(b):
                if _isdigit(s[j]):
                    slow = True
                    break
            if not slow:
                cur = _pat1_for(pats, s[:b], s[e:ln])
                cpre = PyBytes_AS_STRING(cur.prefix)
                csuf = PyBytes_AS_STRING(cur.suffix)
                cplen = b
                cslen = ln - e
        if not slow:
            cur.add(OFF[rl] + _parse_digits(s + b, rl))
            continue
        # general path: no run, several runs, or over-long runs
        name = <object>o
        pattern, pieces, keys = _parse_name(name)
        if len(keys) == 0:
            _check_name(name)
            plain.add(name)
        elif len(keys) == 1:
            _pat1_for(pats, pieces[0].encode("utf-8"), pieces[1].encode("utf-8")).add(keys[0])
        else:
            entry = nd.get(pattern)
            if entry is None:
                _check_name(name)
                entry = nd[pattern] = (pieces, [])
            entry[1].append(keys)
    parts = []
    for p in pats.values():
        parts.append(((<_Pat1>p).pattern, (), (<_Pat1>p).render()))
    for name in plain:
        parts.append((name.replace(u"%", u"%%"), (), name))
    for pattern, (pieces, points) in nd.items():
        for sortkey, text in _fold_nd(pieces, points, len(pieces) - 1):
            parts.append((pattern, sortkey, text))
    parts.sort()
    return [p[2] for p in parts]


def fold(names: Iterable[str]) -> str:
    """Fold names into one expression: ``"n0000 n0001 n0002 n0005".split()`` ->
    ``"n[0000-0002,0005]"``; one name stays bare (``n0005``); patterns are joined by ``,``.

    See ``fold_list`` for the rules; ``expand(fold(names))`` is the set of names.
    """
    return u",".join(fold_list(names))
