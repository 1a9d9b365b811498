"""`vdi image list|show|import|build|distribute`: the golden image catalog from the command line.

Each command gets the validated Config; `build-demo` reads the file only if there is one.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from broker.image_catalog import Catalog, CatalogError, NewVersion, describe
from images.build import DEFAULT_PLAYBOOK
from images.progress import Progress


def _catalog(config) -> tuple[Catalog, object]:
    from broker.db import Database
    from broker.db.migrate import upgrade

    # Like `vdi host` and `vdi pool`: a new database gets its schema (quietly) instead of "no such table".
    upgrade(config.database.url)
    return Catalog(config.images.cache_dir), Database(config.database)


def _fail(exc: CatalogError) -> int:
    print(f"vdi image: {exc}", file=sys.stderr)
    return 1


def cmd_list(config, args: argparse.Namespace) -> int:
    catalog, database = _catalog(config)
    with database.transaction() as session:
        rows = [(image.name, [describe(v) for v in versions]) for image, versions in catalog.images(session)]
    if args.json:
        print(json.dumps({name: versions for name, versions in rows}, indent=2))
        return 0
    print(f"{'NAME':<20} {'VERSION':<24} {'OS':<16} {'SIZE':>10}  SHA256")
    for name, versions in rows:
        for version in versions:
            size = f"{version['size_bytes'] / (1 << 20):.1f}M"
            print(
                f"{name:<20} {version['version']:<24} {version['os']:<16} {size:>10}  {version['sha256'][:16]}"
            )
    return 0


def cmd_show(config, args: argparse.Namespace) -> int:
    catalog, database = _catalog(config)
    try:
        with database.transaction() as session:
            data = describe(catalog.show(session, args.name, args.version))
    except CatalogError as exc:
        return _fail(exc)
    print(json.dumps(data, indent=2))
    return 0


def cmd_import(config, args: argparse.Namespace) -> int:
    catalog, database = _catalog(config)
    new = NewVersion(
        name=args.name,
        version=args.version,
        file=Path(args.file),
        os=args.os,
        expected_sha256=args.sha256.lower() if args.sha256 else None,
        built_by=getpass.getuser(),
        kernel=Path(args.kernel) if args.kernel else None,
        initrd=Path(args.initrd) if args.initrd else None,
        cmdline=args.cmdline,
    )
    try:
        with database.transaction() as session:
            data = describe(catalog.register(session, new))
    except CatalogError as exc:
        return _fail(exc)
    print(f"registered {data['name']} {data['version']} sha256 {data['sha256']}")
    return 0


def cmd_build(config, args: argparse.Namespace) -> int:
    from images.build import BuildError, BuildRequest, build_image

    catalog, database = _catalog(config)
    request = BuildRequest(
        name=args.name, version=args.version, playbook=Path(args.playbook).resolve(), release=args.release
    )
    try:
        with database.transaction() as session:
            catalog.ensure_new_version(session, args.name, args.version)
    except CatalogError as exc:
        return _fail(exc)
    try:
        result = build_image(config.images.cache_dir, request)
    except BuildError as exc:
        print(f"vdi image build: {exc}", file=sys.stderr)
        return 1
    try:
        with database.transaction() as session:
            data = describe(catalog.register(session, result.new_version))
    except CatalogError as exc:
        return _fail(exc)
    finally:
        result.cleanup()
    print(f"built {data['name']} {data['version']} sha256 {data['sha256']}; log {data['build_log']}")
    return 0


def cmd_distribute(config, args: argparse.Namespace) -> int:
    from broker.image_distribution import distribute

    catalog, database = _catalog(config)
    hosts = {host.name: host for host in config.hosts}
    unknown = [name for name in args.host if name not in hosts]
    if unknown:
        return _fail(CatalogError("host", "unknown_host", f"no host named {unknown[0]} in the configuration"))
    try:
        with database.transaction() as session:
            row = catalog.show(session, args.name, args.version)
    except CatalogError as exc:
        return _fail(exc)
    failed = 0
    for name in args.host or sorted(hosts):
        # One step per host: redrawn with its time on a terminal, a line as it starts and ends elsewhere.
        progress = Progress(f"host {name}: upload {row.image_name} {row.version}")
        try:
            needed = distribute(hosts[name], row)
        except CatalogError as exc:
            progress.fail("failed")
            failed += 1
            _fail(exc)
            continue
        progress.finish()
        if not needed:
            print(f"host {name}: its {hosts[name].provider} provider needs no image; skipped")
            continue
        print(
            f"host {name}: {row.image_name} {row.version} uploaded and verified (sha256 {row.sha256[:16]}…)"
        )
    return 1 if failed else 0


def cmd_build_demo(config, args: argparse.Namespace) -> int:
    from images.config import ImageSettings
    from images.demo import build_demo_image

    settings = config.images if config else ImageSettings()
    image = build_demo_image(settings, force=args.force)
    print(f"demo image {image.version} in {image.directory}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    image = sub.add_parser("image", help="golden images", description="golden images")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")

    def add(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        parser = image_sub.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(fn=fn, needs_config="full")
        return parser

    text = "build the demo desktop image unless cached"
    demo_image = image_sub.add_parser("build-demo", help=text, description=text)
    demo_image.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    demo_image.set_defaults(fn=cmd_build_demo, needs_config="optional")

    build = add("build", cmd_build, "debootstrap, provision with Ansible and register a new image version")
    build.add_argument("name", help="image name, e.g. mois-office")
    build.add_argument("--version", required=True, help="new version, e.g. 2026.11.1")
    build.add_argument("--playbook", default=str(DEFAULT_PLAYBOOK), help="playbook (default: %(default)s)")
    build.add_argument("--release", default="bookworm", help="Debian release (default: %(default)s)")

    listing = add("list", cmd_list, "list golden images and their versions")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = add("show", cmd_show, "show one image version (the newest unless --version)")
    show.add_argument("name", help="image name")
    show.add_argument("--version", help="version to show")

    dist = add(
        "distribute", cmd_distribute, "upload a version to hypervisor hosts and verify its SHA-256 there"
    )
    dist.add_argument("name", help="image name")
    dist.add_argument("--version", help="version to upload (default: the newest)")
    dist.add_argument("--host", action="append", default=[], help="a configured host (default: all of them)")

    imp = add("import", cmd_import, "register an existing qcow2 file as a new, immutable image version")
    imp.add_argument("file", help="the qcow2 file")
    imp.add_argument("--name", required=True, help="image name, e.g. mois-office")
    imp.add_argument("--version", required=True, help="new version, e.g. 2026.11.1")
    imp.add_argument("--sha256", help="refuse the file unless its SHA-256 is this")
    imp.add_argument("--os", default="", help="operating system, e.g. debian-12")
    imp.add_argument("--kernel", help="kernel for direct boot, if the image has no boot loader")
    imp.add_argument("--initrd", help="initrd for direct boot")
    imp.add_argument("--cmdline", default="", help="kernel command line for direct boot")
