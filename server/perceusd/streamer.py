"""The one thread that streams every session's image and kernel bytes with sendfile(2), off
the event loop (why: :class:`Streamer`)."""

import asyncio
import os
import queue
import select
import threading

from perceus.native.sysio import sendfile_all


class _EndedEarly(Exception):
    """The file being streamed ended before the bytes that were announced."""


class StreamJob:
    """One IMAGE_DATA's raw bytes, moved by the :class:`Streamer` thread.

    ``sent`` grows as bytes go (read it from the event loop for progress); ``future``
    resolves once the thread has let go of the job: None when every byte went (or the
    job was cancelled), else the error. The job holds its own duplicates of the socket
    and file descriptors, so a session that closes either meanwhile cannot make the
    thread write to a reused descriptor.
    """

    __slots__ = ("out_fd", "in_fd", "offset", "left", "sent", "future", "loop")

    def __init__(
        self, out_fd: int, in_fd: int, offset: int, count: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.out_fd, self.in_fd = out_fd, in_fd
        self.offset, self.left, self.sent = offset, count, 0
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()


_STOP = object()


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        future.set_result(error)


class Streamer:
    """The one thread that streams every session's image and kernel bytes.

    ``loop.sendfile`` re-arms the socket in the event loop's selector after every partial
    sendfile(2); with hundreds of nodes downloading at once that bookkeeping (hundreds of
    thousands of epoll register/unregister pairs and callbacks) fills the event loop, and
    every check-in waits behind it. Here a socket stays in this thread's own epoll
    (level-triggered) from the first byte of an IMAGE_DATA to the last; each wake-up is one
    sendfile in C with the GIL released (:func:`perceus.native.sysio.sendfile_all`), and the
    session hears once, at the end.
    """

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._epoll: select.epoll | None = None
        self._wake = (-1, -1)
        self._thread: threading.Thread | None = None
        self._jobs: dict[int, StreamJob] = {}  # the thread's alone, by the job's socket fd

    def start(self) -> None:
        self._epoll = select.epoll()
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake[0], select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="perceusd-stream", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        """End the thread; jobs still running end as cancelled."""
        if self._thread is None:
            return
        self._post(_STOP)
        self._thread.join(10)
        self._thread = None
        for fd in self._wake:
            os.close(fd)
        assert self._epoll is not None
        self._epoll.close()

    def send(self, sock_fd: int, file_fd: int, offset: int, count: int) -> StreamJob:
        """Start sending ``count`` bytes of ``file_fd`` from ``offset`` on ``sock_fd`` (non-blocking,
        with nothing else queued on it); await ``job.future``."""
        if self._thread is None:
            raise RuntimeError("the streamer is not running")
        out_fd = os.dup(sock_fd)
        try:
            in_fd = os.dup(file_fd)
        except OSError:
            os.close(out_fd)
            raise
        job = StreamJob(out_fd, in_fd, offset, count, asyncio.get_running_loop())
        self._post(job)
        return job

    def cancel(self, job: StreamJob) -> None:
        """Stop ``job`` (its future then resolves with None)."""
        self._post(("cancel", job))

    def _post(self, item: object) -> None:
        self._inbox.put(item)
        try:
            os.write(self._wake[1], b"x")
        except BlockingIOError:
            pass  # the pipe is full: the thread is due to wake anyway

    # -- the thread --

    def _run(self) -> None:
        epoll, wake = self._epoll, self._wake[0]
        assert epoll is not None
        while True:
            for fd, _mask in epoll.poll():
                if fd == wake:
                    if not self._commands():
                        return
                    continue
                job = self._jobs.get(fd)
                if job is not None:
                    self._pump(job)

    def _commands(self) -> bool:
        """Take the inbox; False once told to stop."""
        try:
            while os.read(self._wake[0], 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if item is _STOP:
                for job in list(self._jobs.values()):
                    self._finish(job, None)
                return False
            if isinstance(item, StreamJob):
                self._add(item)
            else:
                _, job = item
                if self._jobs.get(job.out_fd) is job:
                    self._finish(job, None)

    def _add(self, job: StreamJob) -> None:
        assert self._epoll is not None
        self._jobs[job.out_fd] = job
        try:
            self._epoll.register(job.out_fd, select.EPOLLOUT)
        except OSError as exc:
            self._finish(job, exc)
            return
        self._pump(job)

    def _pump(self, job: StreamJob) -> None:
        if job.left:
            try:
                sent = sendfile_all(job.out_fd, job.in_fd, job.offset, job.left)
            except BlockingIOError:
                return
            except OSError as exc:
                self._finish(job, exc)
                return
            if not sent:
                self._finish(job, _EndedEarly())
                return
            job.offset += sent
            job.left -= sent
            job.sent += sent  # the event loop reads it: one int store, atomic under the GIL
        if not job.left:
            self._finish(job, None)

    def _finish(self, job: StreamJob, error: BaseException | None) -> None:
        assert self._epoll is not None
        if self._jobs.get(job.out_fd) is job:
            del self._jobs[job.out_fd]
            try:
                self._epoll.unregister(job.out_fd)
            except (OSError, ValueError):
                pass
        os.close(job.out_fd)
        os.close(job.in_fd)
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, error)
        except RuntimeError:
            pass  # the event loop is closed: nobody waits
