"""Freeze the stage-one program: the modules it can import, compiled, in one zip.

The interpreter is the build host's Debian ``python3.11`` (its libpython is static), so
the standard library must come from the same installation. Which modules go in is found
by reading the source: every ``import`` statement reachable from the entry modules (also
those inside functions), resolved with the host's import system, minus what a booting node
never needs. Modules compiled as shared objects (``_asyncio``, cffi's backend, our
``perceus.native`` syscalls) cannot load from a zip; they are returned apart, to lie as
files under the interpreter's library directory.
"""

import ast
import importlib.machinery
import importlib.util
import io
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENTRY_MODULES", "EXCLUDED", "Frozen", "freeze"]

# What stage one, provisiond and their lazily imported helpers start from.
ENTRY_MODULES = (
    "perceus.stage1.__main__",
    "perceus.stage1.main",
    "perceus.stage1.initramfs",
    "perceus.stage1.netup",
    "perceus.stage1.provisiond",
    "perceus.native.sysio",
    "_cffi_backend",  # imported by the cffi syscalls module from C, where no scanner sees it
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "encodings.aliases",
    "pyroute2.dhcp.client",
    "pyroute2.dhcp.hooks",
    "pyroute2.dhcp.leases",
    "pyroute2.dhcp.fsm",
    "pyroute2.iproute.linux",
)

# Packages with shared objects among their modules: a package lies wholly in the zip or
# wholly on disk, so these go to disk.
ON_DISK = ("perceus.native",)

# Never on a booting node: tools, GUIs, test suites, TLS (it would pull in libssl),
# databases, and the parts of pyroute2 that manage things stage one does not touch.
EXCLUDED = (
    "tkinter", "turtle", "idlelib", "unittest", "doctest", "pydoc", "pydoc_data", "test",
    "lib2to3", "ensurepip", "venv", "distutils", "setuptools", "pip", "_pytest", "pytest",
    # reached only from functions a node never calls (random's self-test, package metadata)
    "importlib.metadata", "importlib.resources", "statistics", "fractions", "decimal",
    "_decimal", "_pydecimal",
    "ssl", "_ssl", "_hashlib", "sqlite3", "_sqlite3", "dbm", "curses", "_curses", "readline",
    "xml", "xmlrpc", "http", "urllib.request", "email", "mailbox", "ftplib", "smtplib",
    "imaplib", "poplib", "nntplib", "telnetlib", "webbrowser", "wsgiref",
    "concurrent.futures.process", "lzma", "_lzma", "bz2", "_bz2", "tarfile", "pdb", "cProfile",
    "profile", "pstats", "trace", "tracemalloc", "pickletools", "asyncio.windows_events",
    "asyncio.windows_utils", "_winapi", "msvcrt", "winreg", "nt", "_overlapped",
    "pyroute2.ndb", "pyroute2.ipdb", "pyroute2.nftables", "pyroute2.ipset", "pyroute2.ipvs",
    "pyroute2.wiset", "pyroute2.iwutil", "pyroute2.conntrack", "pyroute2.devlink",
    "pyroute2.ethtool", "pyroute2.plan9", "pyroute2.remote", "pyroute2.nslink",
    "pyroute2.bsd", "pyroute2.fixtures", "pyroute2.cli", "pyroute2.wirouting",
    "pyroute2.netlink.nl80211", "pyroute2.netlink.ipq", "pyroute2.netlink.taskstats",
    "pyroute2.netlink.event", "pyroute2.netlink.devlink", "pyroute2.netlink.diag",
    "pyroute2.netlink.generic.wireguard", "pyroute2.netlink.generic.mptcp",
    "pyroute2.netlink.generic.l2tp", "pyroute2.netlink.nfnetlink",
    "numpy", "cloudpickle", "lz4", "arrow", "ruamel", "cryptography",
    "psutil", "mitogen", "pyroute2.config.test_platform",
    # the simulated node, for tests and benchmarks: ``--simulate`` reaches it from main, and a
    # booting node answers that option with one line saying it is not in the initramfs
    "perceus.stage1.simulate",
)  # fmt: skip


# Modules a library imports at the top but a node never uses: a stub stands in for them
# (construct.debug imports pdb, which would pull in the whole debugger and its console).
STUBS = {
    "pdb": (
        b'"""Not in stage one."""\n\n\ndef set_trace(*args, **kwargs):\n'
        b'    raise RuntimeError("pdb is not part of stage one")\n\n\npost_mortem = pm = set_trace\n',
        False,
    ),
    # pyroute2's package init imports every protocol it has (nftables, wireguard, nl80211,
    # plan9, ...); stage one imports the submodules it uses directly.
    "pyroute2": (b'"""pyroute2, as stage one carries it: submodules only."""\n', True),
    # pyroute2's rtnl socket imports unittest.mock for its mock-kernel test mode
    "unittest": (b'"""Not in stage one (only unittest.mock\'s name is)."""\n', True),
    # pyroute2's probe messages import ssl for a TLS probe stage one never sends; the real
    # module would bring libssl and libcrypto (several MiB)
    "ssl": (
        b'"""Not in stage one: no TLS. Names only, for isinstance checks and except clauses."""\n\n'
        b"CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED = 0, 1, 2\n\n\n"
        b"class SSLError(OSError):\n    pass\n\n\n"
        b"class SSLWantReadError(SSLError):\n    pass\n\n\n"
        b"class SSLWantWriteError(SSLError):\n    pass\n\n\n"
        b"class SSLSyscallError(SSLError):\n    pass\n\n\n"
        b"class SSLZeroReturnError(SSLError):\n    pass\n\n\n"
        b"class SSLEOFError(SSLError):\n    pass\n\n\n"
        b"class CertificateError(ValueError):\n    pass\n\n\n"
        b"class SSLContext:\n    def __init__(self, *args, **kwargs):\n"
        b'        raise SSLError("ssl is not part of stage one")\n\n\n'
        b"class SSLObject:\n    pass\n\n\nclass SSLSocket:\n    pass\n\n\nclass MemoryBIO:\n    pass\n\n\n"
        b"def create_default_context(*args, **kwargs):\n    return SSLContext()\n",
        False,
    ),
    # pyroute2.config names multiprocessing's Pipe/Queue/Process for its netns helpers,
    # which stage one never starts; the package would cost 0.2 MiB with its extensions
    "multiprocessing": (
        b'"""Not in stage one: names only."""\n\n\ndef _missing(*args, **kwargs):\n'
        b'    raise RuntimeError("multiprocessing is not part of stage one")\n\n\n'
        b"Pipe = Queue = Process = _missing\n\n\ndef cpu_count():\n"
        b"    import os\n\n    return os.cpu_count() or 1\n",
        True,
    ),
    "unittest.mock": (
        b'"""Not in stage one: a do-nothing Mock, enough for a class attribute pyroute2 makes."""\n\n\n'
        b"class Mock:\n    def __init__(self, *args, **kwargs):\n        pass\n\n"
        b"    def __call__(self, *args, **kwargs):\n        return self\n\n"
        b"    def __getattr__(self, name):\n        return self\n\n\nMagicMock = Mock\n",
        False,
    ),
}


@dataclass
class Frozen:
    """The zip's bytes, the shared objects (module name -> file), and what was left out."""

    zip_bytes: bytes
    extensions: dict[str, Path] = field(default_factory=dict)
    disk_files: dict[str, bytes] = field(default_factory=dict)  # compiled modules of ON_DISK packages
    missing: list[str] = field(default_factory=list)


def _excluded(name: str, excluded: tuple[str, ...]) -> bool:
    return any(name == x or name.startswith(x + ".") for x in excluded)


def _imports(source: bytes, name: str, is_package: bool) -> list[str]:
    """Absolute names of every module ``import``ed anywhere in the source (also ``from X import y``'s X.y)."""
    tree = ast.parse(source)
    package = name if is_package else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module:
                continue
            found.append(module)
            found.extend(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _find(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    except Exception:  # noqa: BLE001 - a parent package failed to import: not ours to ship
        return None


def _frozen_imports(spec, name: str) -> list[str]:
    filename = getattr(spec.loader_state, "filename", None)
    if not filename or not Path(filename).exists():
        return []
    is_package = spec.submodule_search_locations is not None
    return _imports(Path(filename).read_bytes(), name, is_package)


def _pyc_path(name: str, is_package: bool) -> str:
    """Where the compiled module lies, in the zip or under the library directory."""
    return name.replace(".", "/") + ("/__init__.pyc" if is_package else ".pyc")


def _compile(source: bytes, arcname: str, optimize: int) -> bytes:
    code = compile(source, arcname, "exec", dont_inherit=True, optimize=optimize)
    return importlib._bootstrap_external._code_to_timestamp_pyc(code, 0, len(source))  # type: ignore[attr-defined]


def freeze(
    entries: tuple[str, ...] = ENTRY_MODULES,
    excluded: tuple[str, ...] = EXCLUDED,
    optimize: int = 2,
    on_disk: tuple[str, ...] = ON_DISK,
    stubs: dict[str, tuple[bytes, bool]] = STUBS,
) -> Frozen:
    """Walk imports from ``entries``; compile every pure-Python module into a zip (stored, not deflated).

    The zip is stored uncompressed: the initramfs is compressed as a whole, and zstd over
    plain bytecode does better than over deflate's output.
    """
    builtin = set(sys.builtin_module_names)
    queue = list(entries)
    seen: set[str] = set()
    sources: dict[str, tuple[str, bytes, bool]] = {}
    extensions: dict[str, Path] = {}
    missing: list[str] = []
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if name in stubs:
            sources[name] = (f"<stub {name}>", *stubs[name])
            continue
        if _excluded(name, excluded):
            continue
        queue.extend(p for p in _parents(name) if p not in seen)
        if name in builtin:
            continue
        spec = _find(name)
        if spec is None:
            if name in entries:
                missing.append(name)
            continue  # "from pkg import attr": attr was not a module
        origin = spec.origin
        if spec.submodule_search_locations is not None and origin in (None, "namespace"):
            sources[name] = ("", b"", True)  # a namespace package: only its directory
            continue
        if origin == "frozen":
            # in the interpreter already, but what it imports may not be (importlib.util -> importlib._abc)
            queue.extend(_frozen_imports(spec, name))
            continue
        if origin is None or origin == "built-in":
            continue
        if isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            extensions[name] = Path(origin)
            continue
        if not origin.endswith(".py"):
            continue
        source = Path(origin).read_bytes()
        is_package = spec.submodule_search_locations is not None
        sources[name] = (origin, source, is_package)
        try:
            queue.extend(_imports(source, name, is_package))
        except SyntaxError:
            missing.append(name)
    disk_files: dict[str, bytes] = {}
    for name in [n for n in sources if _excluded(n, on_disk)]:
        _, source, is_package = sources.pop(name)
        rel = _pyc_path(name, is_package)
        disk_files[rel] = _compile(source, rel[:-1], optimize)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        dirs: set[str] = set()
        for name in sorted(sources):
            origin, source, is_package = sources[name]
            parts = name.split(".")
            for i in range(1, len(parts) + (1 if is_package else 0)):
                d = "/".join(parts[:i]) + "/"
                if d not in dirs:
                    dirs.add(d)
                    zf.writestr(zipfile.ZipInfo(d, (1980, 1, 1, 0, 0, 0)), b"")
            if not origin:
                continue
            arcname = _pyc_path(name, is_package)
            code = _compile(source, arcname[:-1], optimize)
            zf.writestr(zipfile.ZipInfo(arcname, (1980, 1, 1, 0, 0, 0)), code)
    return Frozen(out.getvalue(), extensions, disk_files, missing)
