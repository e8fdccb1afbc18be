"""cffi API-mode builder for ``perceus.native.syscalls`` (placeholder)."""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("int perceus_abi_version(void);")
ffibuilder.set_source("perceus.native.syscalls", "static int perceus_abi_version(void) { return 1; }")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
