"""``smolbox image …``: build, list, inspect, remove, import and export guest images.

Thin by design: the work is in :mod:`smolbox.images`; this module parses options,
shows rich progress for the long steps (kernel build with an ETA, debootstrap,
downloads) on stderr, and renders results as tables or ``--json``. ``--quiet``
(or ``--json``) keeps stderr free of progress for scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.images import ImageCatalog, ImageManifest, InstalledImage
from smolbox.images.progress import NullProgress
from smolbox.images.progress import Progress as ProgressSink
from smolbox.paths import Paths

image_app = typer.Typer(help="Guest images: build, list, inspect, rm, import, pull, export.",
                        no_args_is_help=True)
app.add_typer(image_app, name="image")


class RichProgress:
    """Shows each build step as a rich task: a bar with ETA when the size is known."""

    def __init__(self) -> None:
        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=render.stderr, transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.stop()

    def start(self, step: str, total: float | None = None) -> None:
        label = f"{step} (~5 min on 2 cores)" if step == "kernel build" else step
        self.tasks[step] = self.bar.add_task(label, total=total)

    def advance(self, step: str, completed: float) -> None:
        if step in self.tasks:
            self.bar.update(self.tasks[step], completed=completed)

    def finish(self, step: str, detail: str = "") -> None:
        task = self.tasks.get(step)
        if task is None:
            task = self.tasks[step] = self.bar.add_task(step, total=1)
        total = self.bar.tasks[task].total or 1
        self.bar.update(task, total=total, completed=total,
                        description=f"{step}: {detail}" if detail else step)


def _catalog() -> ImageCatalog:
    paths = Paths.from_env()
    paths.ensure(paths.images, paths.cache)
    return ImageCatalog(paths)


def _summary(manifest: ImageManifest) -> dict[str, Any]:
    return {
        "name": manifest.name, "version": manifest.version, "kernel": manifest.kernel_kind,
        "size_mib": round(sum(f.size for f in manifest.files.values()) / (1 << 20), 1),
        "created": manifest.created.isoformat(timespec="seconds"),
    }


def _show_installed(image: InstalledImage, verb: str) -> None:
    if OPTIONS.json:
        render.print_json({**_summary(image.manifest), "ref": image.ref,
                           "kernel_path": str(image.kernel), "rootfs_path": str(image.rootfs),
                           "cmdline": image.cmdline})
    else:
        render.stdout.print(f"{verb} [bold]{image.ref}[/bold] ({image.directory})")


def _with_progress(quiet: bool) -> RichProgress | None:
    return None if quiet or OPTIONS.json else RichProgress()


@image_app.command("build")
def build(
    kernel: str = typer.Option("minimal", "--kernel", help="minimal (own build) or debian"),
    name: str = typer.Option("default", "--name", help="Image name in the catalogue."),
    package: list[str] = typer.Option([], "--package", "-p",
                                      help="Extra Debian package (repeatable)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Re-assemble even if installed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Build (or reuse) an image from Debian packages; heavy steps are cached per machine."""
    from smolbox.images.builder import build_image

    catalog = _catalog()
    shown = _with_progress(quiet)
    sink: ProgressSink = shown or NullProgress()
    if shown is not None:
        with shown:
            image = build_image(catalog, name=name, kernel=kernel,  # type: ignore[arg-type]
                                packages=tuple(package), progress=sink, rebuild=rebuild)
    else:
        image = build_image(catalog, name=name, kernel=kernel,  # type: ignore[arg-type]
                            packages=tuple(package), progress=sink, rebuild=rebuild)
    _show_installed(image, "ready:")


@image_app.command("list")
def list_images() -> None:
    """Installed images, newest version of each name first."""
    rows = [_summary(m) for m in _catalog().list()]
    if OPTIONS.json:
        render.print_json(rows)
        return
    render.print_table("images", ["name", "version", "kernel", "size MiB", "created"],
                       ([r["name"], r["version"], r["kernel"], r["size_mib"], r["created"]]
                        for r in rows))


@image_app.command("inspect")
def inspect(
    ref: str = typer.Argument("default", help="NAME or NAME:VERSION"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check SHA-256 sums."),
) -> None:
    """Show an image's manifest (and check its files unless --no-verify)."""
    catalog = _catalog()
    manifest = catalog.get(ref).manifest if verify else catalog.find(ref)
    data = manifest.model_dump(mode="json")
    data["path"] = str(catalog.root / manifest.name / manifest.version)
    if OPTIONS.json:
        render.print_json(data)
        return
    flat = {k: v for k, v in data.items() if k not in ("files", "build")}
    for file_name, info in manifest.files.items():
        flat[f"file {file_name}"] = f"{info.size} bytes sha256:{info.sha256}"
    render.print_mapping(flat, title=manifest.ref)


@image_app.command("rm")
def remove(ref: str = typer.Argument(..., help="NAME (all versions) or NAME:VERSION")) -> None:
    """Remove an image version, or every version of a name (refused while in use)."""
    from smolbox.engine.engine import Engine

    with Engine.open() as engine:
        removed = engine.remove_image(ref)
    if OPTIONS.json:
        render.print_json({"removed": removed})
    else:
        render.stdout.print(f"removed {', '.join(removed) or ref}")


@image_app.command("import")
def import_image(
    source: str = typer.Argument(..., help="Path or http(s) URL: smolbox export, docker "
                                           "save tarball, or OCI layout (dir or tar)"),
    sha256: str = typer.Option(..., "--sha256", help="Expected SHA-256 of the archive "
                                                     "(of index.json for an OCI directory)."),
    name: str | None = typer.Option(None, "--name", help="Catalogue name for the image."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Import an image after checking its SHA-256."""
    from smolbox.images.transfer import import_image

    catalog = _catalog()
    shown = _with_progress(quiet)
    if shown is not None:
        with shown:
            image = import_image(catalog, source, sha256, name=name, progress=shown)
    else:
        image = import_image(catalog, source, sha256, name=name)
    _show_installed(image, "imported:")


@image_app.command("pull")
def pull(
    url: str = typer.Argument(..., help="http(s):// or file:// URL (or a path) of a raw or "
                                        "qcow2 disk image"),
    sha256: str = typer.Option(..., "--sha256", help="Expected SHA-256 of the download."),
    name: str | None = typer.Option(None, "--name", help="Catalogue name (default: from URL)."),
    root: str | None = typer.Option(None, "--root", help="Guest root device (default: "
                                                         "/dev/vda1 if partitioned)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Pull a foreign disk image: verify, detect the format, convert, install atomically."""
    from smolbox.images.pull import pull_image

    catalog = _catalog()
    shown = _with_progress(quiet)
    if shown is not None:
        with shown:
            image = pull_image(catalog, url, sha256, name=name, root=root, progress=shown)
    else:
        image = pull_image(catalog, url, sha256, name=name, root=root)
    _show_installed(image, "pulled:")


@image_app.command("export")
def export(
    ref: str = typer.Argument(..., help="NAME or NAME:VERSION"),
    dest: Path = typer.Argument(..., help="Destination tar file."),
) -> None:
    """Write an image to a (sparse) tar file; prints the SHA-256 to import it with."""
    from smolbox.images.transfer import export_image

    digest = export_image(_catalog(), ref, dest)
    if OPTIONS.json:
        render.print_json({"ref": ref, "path": str(dest), "sha256": digest})
    else:
        render.stdout.print(f"exported {ref} to {dest}\nsha256 {digest}")
