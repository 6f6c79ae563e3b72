"""The gate's Lambda packages: handler, its pinned requirements for the Lambda runtime, and the schema.

`scripts/deploy.sh` builds them with `python -m pipelines.lambda_package KIND ARCHIVE`, and the tests
build them the same way, so what the test imports is what AWS runs. Requirements are installed for
the runtime's platform (manylinux x86_64, CPython of LAMBDA_RUNTIME), never for this machine's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipelines import contract
from pipelines.containers import content_digest, lambda_handler_path

# The runtime of every gate function (cloudformation/gate.yaml says the same; a test holds them together).
LAMBDA_RUNTIME = "python3.12"
LAMBDA_PLATFORM = "manylinux2014_x86_64"


def runtime_version() -> str:
    """`3.12` for python3.12: the interpreter the packages are built for."""
    return LAMBDA_RUNTIME.removeprefix("python")


def package_files(kind: str) -> dict[str, Path]:
    """Archive name → source: the handler, its requirements, and the gate's schema it imports."""
    handler = lambda_handler_path(kind)
    return {
        "app.py": handler,
        "requirements.txt": handler.with_name("requirements.txt"),
        "pipelines/__init__.py": Path(contract.__file__).with_name("__init__.py"),
        "pipelines/contract.py": Path(contract.__file__),
    }


def package_digest(kind: str) -> str:
    """A hash of what goes into the package (requirements are pinned): its S3 key changes with it."""
    return content_digest(package_files(kind), 12)


def install_requirements(requirements: Path, target: Path, python_version: str) -> None:
    """pip installs the pinned requirements as wheels for the Lambda platform into `target`."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(target), "--platform", LAMBDA_PLATFORM, "--python-version", python_version,
        "--implementation", "cp", "--only-binary=:all:", "-r", str(requirements),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip could not install {requirements} for {LAMBDA_RUNTIME}:\n{result.stderr.strip()}")


def build_package(kind: str, archive: Path, python_version: str | None = None) -> Path:
    """Build `archive` (a zip) for the `kind` handler; returns it. Written beside and renamed into place."""
    files = package_files(kind)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=f".{kind}-") as scratch:
        staging = Path(scratch) / "package"
        install_requirements(files.pop("requirements.txt"), staging, python_version or runtime_version())
        for name, source in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        partial = Path(scratch) / "package.zip"
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(p for p in staging.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                bundle.write(path, path.relative_to(staging).as_posix())
        partial.replace(archive)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.lambda_package", description=__doc__)
    parser.add_argument("kind", help="the handler folder under lambdas/ (evaluator, promoter)")
    parser.add_argument("archive", type=Path, help="the zip to write")
    args = parser.parse_args(argv)
    try:
        build_package(args.kind, args.archive)
    except (RuntimeError, FileNotFoundError) as error:
        print(f"lambda_package: {error}", file=sys.stderr)
        return 1
    print(f"built {args.archive} ({args.archive.stat().st_size // 1024} KiB) for {LAMBDA_RUNTIME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
