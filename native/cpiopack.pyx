# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The cpio newc writer of image chunks: headers, names, paddings and file data in C.

A chunk is planned in Python (``perceus.imagefmt.image.plan``) as a list of entry tuples
(``ArchiveEntry``, a NamedTuple in this order)::

    (name, mode, uid, gid, nlink, mtime, ino, rdevmajor, rdevminor, filesize, path, data)

``name`` is the archive name (bytes, no NUL); ``path`` (bytes or None) is a regular file
whose ``filesize`` bytes are read with open/read in C, without the GIL; ``data`` (bytes
or None) is stored as is instead (a symlink's target, replaced contents). With neither,
``filesize`` must be 0 (directories, devices, the data-less members of a hard-link group).
devmajor/devminor and check are written as 0.

:class:`ChunkWriter` turns one plan into the complete archive, ``TRAILER!!!`` included:
``build()`` in one preallocated ``bytes`` of exactly ``usize`` bytes, or ``fill(buffer)``
piece by piece (bounded memory for a chunk holding one very large file). A file that
vanished, is no longer a regular file or changed size since it was planned raises
``OSError`` / ``ValueError`` naming it; an entry newc cannot hold raises ``ValueError``.
This module imports nothing of the project.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.unistd cimport close, read


cdef extern from "<fcntl.h>" nogil:
    int O_RDONLY
    int O_CLOEXEC
    int O_NOFOLLOW
    int c_open "open"(const char *path, int flags, ...)

cdef extern from "<sys/stat.h>" nogil:
    ctypedef struct struct_stat "struct stat":
        unsigned int st_mode
        long long st_size
    int c_fstat "fstat"(int fd, struct_stat *buf)
    int S_ISREG(unsigned int mode)


import os

MAX_NEWC_FILESIZE = 0xFFFFFFFF
MAX_NAME_SIZE = 4096
HEADER_SIZE = 110
TRAILER_SIZE = 124  # 110 + len("TRAILER!!!\0") = 121, padded to 4

cdef const char *HEXDIGITS = b"0123456789ABCDEF"
cdef const char *TRAILER_NAME = b"TRAILER!!!"

cdef enum:
    PH_START = 0
    PH_HEAD = 1
    PH_DATA = 2
    PH_PAD = 3
    PH_DONE = 4

cdef enum:
    E_NONE = 0
    E_OPEN = 1
    E_FSTAT = 2
    E_NOTREG = 3
    E_SIZE = 4
    E_READ = 5
    E_SHRANK = 6

cdef struct Ent:
    const char *name
    Py_ssize_t namelen
    const char *path
    const char *data
    uint32_t ino, mode, uid, gid, nlink, mtime, rmaj, rmin
    uint64_t filesize

cdef inline void hex8(unsigned char *p, uint32_t v) noexcept nogil:
    cdef int i
    for i in range(7, -1, -1):
        p[i] = HEXDIGITS[v & 15]
        v >>= 4

cdef inline Py_ssize_t format_header(unsigned char *p, const Ent *e) noexcept nogil:
    """Header + name + NUL + padding at p; returns its length (a multiple of 4)."""
    cdef Py_ssize_t n = 110 + e.namelen + 1
    cdef Py_ssize_t total = (n + 3) & ~3
    memcpy(p, b"070701", 6)
    hex8(p + 6, e.ino)
    hex8(p + 14, e.mode)
    hex8(p + 22, e.uid)
    hex8(p + 30, e.gid)
    hex8(p + 38, e.nlink)
    hex8(p + 46, e.mtime)
    hex8(p + 54, <uint32_t>e.filesize)
    hex8(p + 62, 0)
    hex8(p + 70, 0)
    hex8(p + 78, e.rmaj)
    hex8(p + 86, e.rmin)
    hex8(p + 94, <uint32_t>(e.namelen + 1))
    hex8(p + 102, 0)
    memcpy(p + 110, e.name, e.namelen)
    memset(p + 110 + e.namelen, 0, total - n + 1)
    return total


def _u32(value, what, name):
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{os.fsdecode(name)}: {what} {value!r} does not fit cpio newc (0..4294967295)")
    return value


cdef class ChunkWriter:
    """One planned chunk -> its complete cpio newc archive (see the module docstring)."""

    cdef Ent *ents
    cdef Py_ssize_t n
    cdef object keep
    cdef readonly unsigned long long usize
    cdef readonly unsigned long long written
    cdef Py_ssize_t idx
    cdef int phase
    cdef uint64_t pos
    cdef int fd
    cdef Py_ssize_t hdrlen
    cdef unsigned char hdr[110 + 4096 + 4]
    cdef Ent trailer
    cdef int err
    cdef int err_errno
    cdef long long err_size

    def __cinit__(self, entries):
        cdef Py_ssize_t n, i
        cdef Ent *e
        cdef unsigned long long usize = 0
        self.ents = NULL
        self.fd = -1
        self.n = 0
        entries = tuple(entries)  # the bytes the Ents point into stay alive with self.keep
        self.keep = entries
        n = len(entries)
        self.ents = <Ent *>malloc((n if n else 1) * sizeof(Ent))
        if self.ents == NULL:
            raise MemoryError()
        for i in range(n):
            item = entries[i]
            if not isinstance(item, tuple) or len(item) != 12:
                raise TypeError(f"entry {i}: expected a 12-tuple, got {item!r}")
            name, mode, uid, gid, nlink, mtime, ino, rmaj, rmin, filesize, path, data = item
            if not isinstance(name, bytes) or not name or b"\0" in name:
                raise ValueError(f"entry {i}: bad name {name!r}")
            if len(name) + 1 > MAX_NAME_SIZE:
                raise ValueError(f"{os.fsdecode(name)}: name longer than {MAX_NAME_SIZE - 1} bytes")
            if not isinstance(filesize, int) or filesize < 0:
                raise ValueError(f"{os.fsdecode(name)}: bad file size {filesize!r}")
            if filesize > MAX_NEWC_FILESIZE:
                raise ValueError(
                    f"{os.fsdecode(name)}: {filesize} bytes is too large for cpio newc "
                    f"(the limit is {MAX_NEWC_FILESIZE} bytes)"
                )
            e = &self.ents[i]
            e.name = PyBytes_AS_STRING(name)
            e.namelen = len(name)
            e.mode = _u32(mode, "mode", name)
            e.uid = _u32(uid, "uid", name)
            e.gid = _u32(gid, "gid", name)
            e.nlink = _u32(nlink, "nlink", name)
            e.mtime = _u32(mtime, "mtime", name)
            e.ino = _u32(ino, "ino", name)
            e.rmaj = _u32(rmaj, "rdevmajor", name)
            e.rmin = _u32(rmin, "rdevminor", name)
            e.filesize = filesize
            e.path = NULL
            e.data = NULL
            if data is not None:
                if not isinstance(data, bytes) or len(data) != filesize:
                    raise ValueError(f"{os.fsdecode(name)}: data is not {filesize} bytes")
                e.data = PyBytes_AS_STRING(data)
            elif path is not None:
                if not isinstance(path, bytes) or b"\0" in path:
                    raise ValueError(f"{os.fsdecode(name)}: bad source path {path!r}")
                e.path = PyBytes_AS_STRING(path)
            elif filesize:
                raise ValueError(f"{os.fsdecode(name)}: {filesize} bytes but no path or data")
            usize += ((110 + e.namelen + 1 + 3) & ~3) + ((filesize + 3) & ~3)
            self.n = i + 1
        self.trailer.name = TRAILER_NAME
        self.trailer.namelen = 10
        self.trailer.path = NULL
        self.trailer.data = NULL
        self.trailer.ino = self.trailer.mode = self.trailer.uid = self.trailer.gid = 0
        self.trailer.mtime = self.trailer.rmaj = self.trailer.rmin = 0
        self.trailer.nlink = 1
        self.trailer.filesize = 0
        self.usize = usize + TRAILER_SIZE
        self.written = 0
        self.idx = 0
        self.phase = PH_START
        self.pos = 0
        self.err = E_NONE

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        free(self.ents)

    @property
    def entries(self):
        return self.n

    cdef Py_ssize_t _fill(self, unsigned char *out, Py_ssize_t room) noexcept nogil:
        cdef Py_ssize_t done = 0
        cdef uint64_t k, want
        cdef Ent *e
        cdef ssize_t r
        cdef struct_stat st
        while done < room:
            if self.phase == PH_START:
                if self.idx < self.n:
                    self.hdrlen = format_header(self.hdr, &self.ents[self.idx])
                else:
                    self.hdrlen = format_header(self.hdr, &self.trailer)
                self.pos = 0
                self.phase = PH_HEAD
            elif self.phase == PH_HEAD:
                k = self.hdrlen - self.pos
                if k > <uint64_t>(room - done):
                    k = room - done
                memcpy(out + done, self.hdr + self.pos, k)
                done += k
                self.pos += k
                if self.pos == <uint64_t>self.hdrlen:
                    self.pos = 0
                    self.phase = PH_DONE if self.idx == self.n else PH_DATA
            elif self.phase == PH_DATA:
                e = &self.ents[self.idx]
                if self.pos == e.filesize:
                    if self.fd >= 0:
                        close(self.fd)
                        self.fd = -1
                    self.pos = 0
                    self.phase = PH_PAD
                    continue
                want = e.filesize - self.pos
                if want > <uint64_t>(room - done):
                    want = room - done
                if e.data != NULL:
                    memcpy(out + done, e.data + self.pos, want)
                    k = want
                else:
                    if self.fd < 0:
                        self.fd = c_open(e.path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                        if self.fd < 0:
                            self.err = E_OPEN
                            self.err_errno = errno
                            return -1
                        if c_fstat(self.fd, &st) != 0:
                            self.err = E_FSTAT
                            self.err_errno = errno
                            return -1
                        if not S_ISREG(st.st_mode):
                            self.err = E_NOTREG
                            return -1
                        if <uint64_t>st.st_size != e.filesize:
                            self.err = E_SIZE
                            self.err_size = st.st_size
                            return -1
                    r = read(self.fd, out + done, want)
                    if r < 0:
                        if errno == EINTR:
                            continue
                        self.err = E_READ
                        self.err_errno = errno
                        return -1
                    if r == 0:
                        self.err = E_SHRANK
                        self.err_size = <long long>self.pos
                        return -1
                    k = r
                done += k
                self.pos += k
            elif self.phase == PH_PAD:
                e = &self.ents[self.idx]
                k = ((e.filesize + 3) & ~(<uint64_t>3)) - e.filesize - self.pos
                if k > <uint64_t>(room - done):
                    k = room - done
                memset(out + done, 0, k)
                done += k
                self.pos += k
                if self.pos == ((e.filesize + 3) & ~(<uint64_t>3)) - e.filesize:
                    self.idx += 1
                    self.phase = PH_START
            else:
                break
        return done

    cdef _raise(self):
        cdef Ent *e = &self.ents[self.idx]
        item = self.keep[self.idx]
        name = os.fsdecode(item[0])
        path = os.fsdecode(item[10]) if item[10] is not None else ""
        kind, self.err = self.err, E_NONE
        self.phase = PH_DONE
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        if kind == E_OPEN:
            what = "vanished" if self.err_errno == 2 else "cannot be opened"
            raise OSError(self.err_errno, f"{name}: file {what} while packing: {os.strerror(self.err_errno)}", path)
        if kind in (E_FSTAT, E_READ):
            raise OSError(self.err_errno, f"{name}: cannot read: {os.strerror(self.err_errno)}", path)
        if kind == E_NOTREG:
            raise ValueError(f"{name}: no longer a regular file ({path})")
        if kind == E_SIZE:
            raise ValueError(f"{name}: file changed size while packing ({e.filesize} bytes planned, "
                             f"{self.err_size} now; {path})")
        raise ValueError(f"{name}: file shrank while packing (ended after {self.err_size} of "
                         f"{e.filesize} bytes; {path})")

    def fill(self, unsigned char[::1] buf not None):
        """Write the next bytes of the archive into ``buf``; returns how many (0 at the end)."""
        cdef Py_ssize_t r, room = buf.shape[0]
        if room == 0:
            return 0
        with nogil:
            r = self._fill(&buf[0], room)
        if r < 0:
            self._raise()
        self.written += r
        return r

    def build(self):
        """The whole archive as one ``bytes`` of ``usize`` bytes (only before any ``fill``)."""
        if self.written or self.phase != PH_START or self.idx:
            raise RuntimeError("ChunkWriter.build() after fill()")
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>self.usize)
        cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
        cdef Py_ssize_t r, room = <Py_ssize_t>self.usize
        with nogil:
            r = self._fill(p, room)
        if r < 0:
            self._raise()
        if r != room:
            raise RuntimeError(f"cpiopack: wrote {r} of {room} bytes")
        self.written = r
        return out


def build_chunk(list entries):
    """The complete newc archive (with its trailer) of one planned chunk, as bytes."""
    return ChunkWriter(entries).build()
