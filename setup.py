"""Build and install perceus: each top-level folder becomes ``perceus.<folder>``.

``perceus`` itself is a namespace package; the compiled hot path lives in
``native/`` as Cython modules (``ext_modules``) and cffi API-mode modules
(``cffi_modules``).
"""

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

ROOMS = ["common", "stage1", "native", "server", "imagefmt", "capsule", "bench", "buildroot"]

# Each room and its sub-packages (server.cli, server.db, server.modules...), so a wheel has them too.
PACKAGES = [f"perceus.{room}" for room in ROOMS] + [
    f"perceus.{room}.{sub}" for room in ROOMS for sub in find_packages(room)
]

EXTENSIONS = cythonize(
    [
        Extension("perceus.native.nodeset", ["native/nodeset.pyx"], extra_compile_args=["-O2"]),
        Extension("perceus.native.cpiopack", ["native/cpiopack.pyx"], extra_compile_args=["-O2"]),
    ],
    language_level=3,
    compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
)

setup(
    name="perceus",
    version="0.1.0",
    description="Cluster provisioning toolkit: a Python re-creation of Perceus",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir={f"perceus.{room}": room for room in ROOMS},
    package_data={"perceus.server": ["data/*", "data/modules/**/*"]},
    ext_modules=EXTENSIONS,
    cffi_modules=["native/syscalls_build.py:ffibuilder"],
    setup_requires=["cffi>=1.16"],
    install_requires=[
        "click>=8.1",
        "cffi>=1.16",
        "construct>=2.10",
        "zstandard>=0.22",
        "pyelftools>=0.31",
        "pyroute2>=0.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-benchmark>=4",
            "ClusterShell>=1.9",
            "ruff>=0.5",
            "import-linter>=2.6",
            "pytest-xdist>=3",
        ],
    },
    entry_points={
        "console_scripts": [
            "perceus=perceus.server.cli:main",
            "perceusd=perceus.server.daemon:main",
            "perceus-sim=perceus.bench.sim:main",
            "perceus-stage1=perceus.stage1.main:main",
            "provisiond=perceus.stage1.main:main",
        ],
    },
)
